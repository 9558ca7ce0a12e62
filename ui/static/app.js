// Live updates: reload shortly after anything changes, unless typing.
let timer = null;
const source = new EventSource('/api/stream');
source.onmessage = () => {
  if (timer) return;
  timer = setTimeout(() => {
    const a = document.activeElement;
    if (!a || a.tagName !== 'INPUT') location.reload();
    timer = null;
  }, 1000);
};
