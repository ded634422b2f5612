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
