"""The table `make bench` prints: workload, figure, baseline, ratio."""

from dataclasses import dataclass, field


@dataclass
class Row:
    workload: str
    figure: str
    baseline: str
    ratio: str
    aim: str = ""


@dataclass
class Table:
    rows: list = field(default_factory=list)

    def add(self, workload, figure, baseline="", ratio="", aim=""):
        self.rows.append(Row(workload, figure, baseline, ratio, aim))
        print(f"  measured: {workload}: {figure}" + (f" (baseline {baseline}, ratio {ratio})" if baseline else ""),
              flush=True)

    def render(self):
        headers = ["workload", "figure", "baseline (same run)", "ratio", "aim"]
        cells = [[r.workload, r.figure, r.baseline, r.ratio, r.aim] for r in self.rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
        line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
        out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(c) for c in cells]
        return "\n".join(out)
