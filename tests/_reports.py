"""Reading our reports back: the Markdown tables of a ``report.md``."""


def markdown_tables(text: str) -> dict:
    """``{title: [{column: cell}, ...]}`` for every Markdown table of ``text``; a table's title
    is the last ``### `` heading above it."""
    def cells(line):
        return [c.strip() for c in line.strip().strip("|").split("|")]

    lines, tables, title = text.splitlines(), {}, None
    for i, line in enumerate(lines):
        if line.startswith("### "):
            title = line[4:]
        elif line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header, rows = cells(line), []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, cells(row))))
            tables[title] = rows
    return tables


def _f4(v):
    return "-" if v is None or v != v else f"{v:.4f}"


def check_calibration(run, calibration: dict, title: str, plot: str = "plots/reliability_test.png"):
    """The calibration table ``title`` of the run's report holds ``calibration``'s numbers to 4
    decimals, and the reliability diagram ``plot`` is written. ``calibration``: one model's
    ``calibration_metrics`` (rows: its classes, then "overall ...") or ``{row name:
    calibration_metrics}`` (a comparison table: each model's overall values)."""
    rows = {r[next(iter(r))]: r for r in markdown_tables(run.file("report.md").read_text())[title]}
    if "per_class" in calibration:
        (name,) = [k for k in rows if k.startswith("overall")]
        expected = dict(calibration["per_class"], **{name: calibration["overall"]})
    else:
        expected = {k: v["overall"] for k, v in calibration.items()}
    assert set(rows) == set(expected), (title, sorted(rows))
    for name, m in expected.items():
        assert (rows[name]["ECE"], rows[name]["ECE (equal mass)"], rows[name]["Brier"]) == (
            _f4(m["ece"]), _f4(m["ece_equal_mass"]), _f4(m["brier"])), (title, name)
    assert run.file(*plot.split("/")).read_bytes()[:4] == b"\x89PNG", plot
