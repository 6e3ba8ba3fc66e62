// Takes the page's body, rendered anew by the agent, whenever it changes (server-sent events).
(function () {
  const body = document.getElementById("body");
  const live = document.getElementById("live");
  const source = new EventSource("/_mesh/stream");
  source.addEventListener("body", (message) => {
    body.innerHTML = message.data;
    live.textContent = "live updates: on";
  });
  source.onopen = () => { live.textContent = "live updates: on"; };
  source.onerror = () => { live.textContent = "live updates: reconnecting"; };
})();
