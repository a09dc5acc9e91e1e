// Draw each <canvas data-chart="ID"> from the JSON in <script type="application/json" id="ID">:
// {"labels": [...], "series": [{"label", "data"}], "lines": [{"label", "value"}]}.
(function () {
  "use strict";
  var colours = ["#2f6fde", "#1f8a4c", "#b7791f", "#8e44ad"];
  function draw(canvas) {
    var source = document.getElementById(canvas.dataset.chart);
    if (!source || typeof Chart === "undefined") { return; }
    var data = JSON.parse(source.textContent);
    var datasets = data.series.map(function (series, index) {
      return { label: series.label, data: series.data, borderColor: colours[index % colours.length],
        backgroundColor: colours[index % colours.length], tension: 0.15, pointRadius: 1.5 };
    });
    (data.lines || []).forEach(function (line) {
      datasets.push({ label: line.label, data: data.labels.map(function () { return line.value; }),
        borderColor: "#c0392b", borderDash: [6, 4], pointRadius: 0, borderWidth: 1, type: "line" });
    });
    new Chart(canvas, {
      type: canvas.dataset.kind || "line",
      data: { labels: data.labels, datasets: datasets },
      options: { animation: false, responsive: true, interaction: { mode: "index", intersect: false },
        scales: { y: { beginAtZero: true } }, plugins: { legend: { position: "bottom" } } }
    });
    canvas.dataset.drawn = "true";
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  });
})();
