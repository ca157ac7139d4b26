// Asks the gateway's health endpoint and shows the answer on the page.
fetch("/healthz")
  .then((r) => r.text().then((t) => `health: ${r.status} ${t}`))
  .catch((e) => `health check failed: ${e}`)
  .then((msg) => { document.getElementById("health").textContent = msg; });
