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

// Copy for AI: the plain-text summary to the clipboard in one click (the
// link next to it shows the same text without JavaScript).
const copy = document.getElementById('copy-ai');
if (copy && navigator.clipboard) {
  copy.hidden = false;
  copy.addEventListener('click', async () => {
    const done = document.getElementById('copy-ai-done');
    try {
      const response = await fetch('/api/ai-context');
      await navigator.clipboard.writeText(await response.text());
      done.textContent = 'copied';
    } catch (error) {
      done.textContent = 'not copied: ' + error;
    }
  });
}
