"""The admin dashboard page: top searches, hit rate, API calls saved, card search, a chart.

A framework-free HTML renderer, so every integration serves the same page. The numbers are
rendered on the server; a small script then loads the chart of whichever card is picked
from ``chart_url`` (so the page works without JavaScript, and is richer with it). The card
search box submits to the page itself (``?q=``, results rendered on the server); with the
script it asks ``search_url`` (``store.cards.search`` as JSON) and shows the results in place.
"""

from __future__ import annotations

from html import escape
from typing import Any

from kuya_store.analytics import SearchStats, TopSearch
from kuya_store.cards import CardMatch

__all__ = ["render_dashboard"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#24292f;background:#f6f8fa}
h1{font-size:1.4rem}section{background:#fff;border:1px solid #d0d7de;border-radius:8px;
padding:1rem 1.25rem;margin-bottom:1rem}.tiles{display:flex;gap:1rem;flex-wrap:wrap}
.tile{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:.75rem 1rem;
min-width:10rem}
.tile b{display:block;font-size:1.5rem}table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eaeef2}
button{cursor:pointer;border:none;background:none;color:#0969da;padding:0;font:inherit}
"""

_SCRIPT = """
(function () {
  const chart = document.getElementById("chart");
  const caption = document.getElementById("chart-card");
  async function show(card) {
    caption.textContent = card;
    const response = await fetch(chart.dataset.url.replace("{card}", encodeURIComponent(card)));
    chart.innerHTML = response.ok ? await response.text() : "<p>No chart for this card.</p>";
    chart.dataset.loaded = card;
  }
  function bind(root) {
    root.querySelectorAll("button[data-card]").forEach(function (button) {
      button.addEventListener("click", function () { show(button.dataset.card); });
    });
  }
  bind(document);
  const form = document.getElementById("card-search");
  const results = document.getElementById("card-matches");
  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const text = form.elements.q.value.trim();
    if (!text) { return; }
    const url = form.dataset.url.replace("{text}", encodeURIComponent(text));
    const response = await fetch(url);
    const matches = response.ok ? await response.json() : [];
    results.replaceChildren();
    matches.forEach(function (match) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.card = match.card_identifier;
      button.textContent = match.query;
      item.append(button, " " + match.searches + " searches, market value " +
                  (match.market_value === null ? "n/a" : match.market_value));
      results.append(item);
    });
    if (!matches.length) { results.innerHTML = "<li>No card matches.</li>"; }
    results.dataset.searched = text;
    bind(results);
    if (matches.length) { show(matches[0].card_identifier); }
  });
  const first = document.querySelector("button[data-card]");
  if (first) { show(first.dataset.card); }
})();
"""


def _tile(label: str, value: str, name: str) -> str:
    return f'<div class="tile" id="{name}">{escape(label)}<b>{escape(value)}</b></div>'


def _matches(matches: list[CardMatch] | None) -> str:
    if matches is None:
        return ""
    if not matches:
        return "<li>No card matches.</li>"
    return "".join(
        f'<li><button type="button" data-card="{escape(m.card_identifier)}">'
        f"{escape(m.query)}</button> {m.searches} searches, market value "
        f"{escape(str(m.market_value)) if m.market_value is not None else 'n/a'}</li>"
        for m in matches
    )


def render_dashboard(
    stats: SearchStats,
    top: list[TopSearch],
    metrics: dict[str, Any],
    *,
    chart_url: str = "/analytics/{card}/chart.svg",
    search_url: str = "/cards/search?q={text}",
    searched: str = "",
    matches: list[CardMatch] | None = None,
    title: str = "kuya-store dashboard",
) -> str:
    """An HTML page of search analytics and card search.

    Args:
        chart_url: a card's chart, with a ``{card}`` placeholder.
        search_url: card search answering JSON (a list of ``CardMatch``), with ``{text}``.
        searched: the text of a card search the page shows the ``matches`` of.
    """
    rows = (
        "".join(
            "<tr>"
            f'<td><button type="button" data-card="{escape(t.card_identifier)}">'
            f"{escape(t.query)}</button></td>"
            f"<td>{t.searches}</td><td>{t.cache_hits}</td>"
            f"<td>{escape(t.last_searched_at.strftime('%Y-%m-%d %H:%M'))} UTC</td>"
            "</tr>"
            for t in top
        )
        or '<tr><td colspan="4">No searches yet.</td></tr>'
    )
    tiers = metrics.get("tier_hits", {})
    tier_text = ", ".join(f"{escape(k)} {v}" for k, v in tiers.items())
    budget = metrics.get("budget", {})
    spent = [
        f"{kind} {figures['used_here']:,} of {figures['limit']:,} ({period})"
        for kind in ("sold", "active")
        for period, figures in budget.get(kind, {}).items()
    ]
    budget_text = (
        "; ".join(spent) if budget.get("daily_limit") or budget.get("hourly_limit") else ""
    )
    tiles = "".join(
        (
            _tile("Searches", f"{stats.total:,}", "searches"),
            _tile("Cache hit rate", f"{stats.cache_hit_rate:.1%}", "hit-rate"),
            _tile("API calls", f"{stats.api_calls:,}", "api-calls"),
            _tile("API calls saved", f"{stats.api_calls_saved:,}", "api-calls-saved"),
            _tile(
                "p95 latency", f"{stats.p95_ms} ms" if stats.p95_ms is not None else "n/a", "p95"
            ),
            _tile("API budget", budget_text or "no budget set", "api-budget"),
        )
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{escape(title)}</h1><div class="tiles">{tiles}</div>'
        f'<section><h2>Top searches</h2><table id="top-searches"><thead><tr><th>card</th>'
        f"<th>searches</th><th>cache hits</th><th>last searched</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
        f'<section><h2>Card search</h2><form id="card-search" method="get" '
        f'data-url="{escape(search_url)}"><input name="q" type="search" '
        f'placeholder="wemby chrome rookie" value="{escape(searched)}"> '
        f'<button type="submit">Search</button></form>'
        f'<ul id="card-matches" data-searched="{escape(searched)}">{_matches(matches)}</ul>'
        f"</section>"
        f'<section><h2>Price history: <span id="chart-card">pick a card</span></h2>'
        f'<div id="chart" data-url="{escape(chart_url)}"></div></section>'
        f'<section><h2>Tiers since start</h2><p id="tiers">{tier_text}; '
        f"mode {escape(str(metrics.get('mode', '')))}, hot tier "
        f"{escape(str(metrics.get('hot_tier', '')))}</p></section>"
        f"<script>{_SCRIPT}</script></body></html>"
    )
