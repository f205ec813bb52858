"""The SVG price chart: valid XML, the expected points, readable at 0, 1 and 1,000 points."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date, timedelta
from decimal import Decimal

import kuya_store as ks

NS = {"svg": "http://www.w3.org/2000/svg"}


def _snapshots(n: int) -> list[ks.PriceSnapshot]:
    return [
        ks.PriceSnapshot(
            card_identifier="1986-fleer-michael-jordan-57",
            snapshot_date=date(2024, 1, 1) + timedelta(days=i),
            market_value=Decimal(100 + i % 37),
            fmv_low=Decimal(90 + i % 37),
            fmv_high=Decimal(115 + i % 37),
        )
        for i in range(n)
    ]


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def test_points_band_and_labels() -> None:
    svg = ks.render_price_chart(_snapshots(10))
    root = _parse(svg)
    line = root.find("svg:polyline[@class='market-value']", NS)
    assert line is not None and len(line.get("points", "").split()) == 10
    assert root.find("svg:polygon[@class='fmv-band']", NS) is not None
    x_labels = [t.text for t in root.findall("svg:text[@class='x-label']", NS)]
    assert x_labels[0] == "2024-01-01" and x_labels[-1] == "2024-01-10"
    y_labels = [t.text or "" for t in root.findall("svg:text[@class='y-label']", NS)]
    assert len(y_labels) == 5 and all(label.startswith("$") for label in y_labels)
    assert len(root.findall("svg:circle", NS)) == 10
    assert "market value (USD)" in svg


def test_one_point_is_readable() -> None:
    root = _parse(ks.render_price_chart(_snapshots(1)))
    line = root.find("svg:polyline[@class='market-value']", NS)
    assert line is not None and len(line.get("points", "").split()) == 1
    assert len(root.findall("svg:circle", NS)) == 1
    assert [t.text for t in root.findall("svg:text[@class='x-label']", NS)] == ["2024-01-01"]


def test_a_thousand_points_keeps_labels_sparse() -> None:
    svg = ks.render_price_chart(_snapshots(1000), width=900)
    root = _parse(svg)
    line = root.find("svg:polyline[@class='market-value']", NS)
    assert line is not None and len(line.get("points", "").split()) == 1000
    assert len(root.findall("svg:text[@class='x-label']", NS)) <= 6
    assert root.findall("svg:circle", NS) == []  # markers only while they stay readable
    xs = [float(p.split(",")[0]) for p in line.get("points", "").split()]
    assert xs == sorted(xs) and 0 < xs[0] < xs[-1] <= 900


def test_empty_history_renders_no_data() -> None:
    root = _parse(ks.render_price_chart([], title="Nothing yet"))
    note = root.find("svg:text[@class='no-data']", NS)
    assert note is not None and note.text == "No price data yet"
    assert root.find("svg:polyline", NS) is None


def test_title_is_escaped() -> None:
    svg = ks.render_price_chart(_snapshots(2), title='<script>alert("x")</script> & co')
    root = _parse(svg)
    assert "<script>" not in svg
    assert any("<script>" in (t.text or "") for t in root.iter("{http://www.w3.org/2000/svg}text"))
