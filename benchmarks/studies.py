"""Run the shipped NBC studies and write docs/results.md from their reports (the one command behind that page).

    python benchmarks/studies.py --data-dir ../shared/datasets            # nbc-mnist-fc, nbc-mnist-cnn, nbc-fashion
    python benchmarks/studies.py --study nbc-mnist --data-dir DIR         # the full protocol (many hours)

Each study runs through ``vfnn study`` (resumable: re-running finishes an interrupted one), then
its ``study.md`` tables and figures are copied into docs/results.md and docs/results/<study>/,
followed by the NBC targets of the project (fewer unstable neurons, UNSAT % against CE and RS at
every radius, decided % where CE times out, NBC combined with PGD and CROWN-IBP, epoch cost),
each marked met or missed with the measured figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"


def run_study(name: str, data_dir: str, out: Path) -> str | None:
    """Run (or resume) one study; None when it finished, else the reason it could not."""
    cmd = [sys.executable, "-m", "vfnn", "study", name, "--data-dir", data_dir, "--out", str(out), "-q"]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit code {proc.returncode}"
    return None


def _rows(report: dict, arch: str, recipe: str) -> dict[float, dict]:
    return {r["eps"]: r for r in report["verification"] if r["arch"] == arch and r["recipe"] == recipe}


def _train(report: dict, arch: str, recipe: str) -> dict | None:
    return next((r for r in report["training"] if r["arch"] == arch and r["recipe"] == recipe), None)


def _mark(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def _eps_list(radii: list[float]) -> str:
    return ", ".join(f"{e:g}" for e in radii)


def _unstable_target(ce: dict, nbc: dict) -> str:
    ratio = ce["unstable"] / max(nbc["unstable"], 1e-9)
    loss = 100 * (ce["clean"] - nbc["clean"])
    return (f"- {_mark(ratio >= 5 and loss <= 2)}: ce+nbc has {ratio:.1f}x fewer CROWN-unstable neurons than ce at the "
            f"training eps ({nbc['unstable']:.1f} vs {ce['unstable']:.1f}; target >= 5x), {loss:.1f} points of clean "
            "accuracy lost (target <= 2).")


def _unsat_target(v_ce: dict, v_nbc: dict, v_rs: dict) -> list[str]:
    radii = sorted(set(v_ce) & set(v_nbc))
    worse = [e for e in radii if v_nbc[e]["unsat"] < max(v_ce[e]["unsat"], v_rs.get(e, v_ce[e])["unsat"])]
    cells = ", ".join(f"{e:g}: {100 * v_nbc[e]['unsat']:.0f}/{100 * v_ce[e]['unsat']:.0f}"
                      + (f"/{100 * v_rs[e]['unsat']:.0f}" if e in v_rs else "") for e in radii)
    out = [f"- {_mark(not worse)}: UNSAT % of ce+nbc >= ce's and >= ce+rs's at every radius (eps: nbc/ce/rs = {cells})"
           + (f"; below at eps {_eps_list(worse)}" if worse else "")]
    hard = [e for e in radii if v_ce[e]["timeout"] > v_ce[e]["n"] / 2]
    if hard:
        decided = min(v_nbc[e]["decided"] for e in hard)
        out.append(f"- {_mark(decided >= 0.9)}: where most of ce's properties time out (eps {_eps_list(hard)}), "
                   f"ce+nbc decides at least {100 * decided:.0f}% (target >= 90%).")
    else:
        out.append("- NOT TESTED: at no radius did most of ce's properties time out.")
    return out


def _combination_target(base: str, b: dict, bn: dict, vb: dict, vbn: dict) -> str:
    common = sorted(set(vb) & set(vbn))
    more = sum(vbn[e]["unsat"] - vb[e]["unsat"] for e in common) / len(common)
    faster = sum(vbn[e]["median_s"] < vb[e]["median_s"] for e in common)
    acc = 100 * (bn["clean"] - b["clean"])
    ok = (more > 0 or faster == len(common)) and abs(acc) <= 1
    return (f"- {_mark(ok)}: {base}+nbc vs {base}: mean UNSAT {100 * more:+.1f} points over the radii, median time "
            f"lower at {faster}/{len(common)} radii, clean accuracy {acc:+.1f} points (target: more UNSAT or faster, "
            "at +-1 point).")


def targets(report: dict) -> list[str]:
    """The NBC targets, per architecture, with the figures that decide them."""
    out = []
    for arch in dict.fromkeys(r["arch"] for r in report["training"]):
        ce, nbc = _train(report, arch, "ce"), _train(report, arch, "ce+nbc")
        if not (ce and nbc):
            continue
        out += [f"**{arch}**", "", _unstable_target(ce, nbc)]
        out += _unsat_target(*(_rows(report, arch, k) for k in ("ce", "ce+nbc", "ce+rs")))
        for base in ("pgd", "crown-ibp"):
            b, bn = _train(report, arch, base), _train(report, arch, f"{base}+nbc")
            if b and bn:
                rows = _rows(report, arch, base), _rows(report, arch, f"{base}+nbc")
                out.append(_combination_target(base, b, bn, *rows))
        if nbc.get("x_ce") is not None:
            out.append(f"- {_mark(nbc['x_ce'] <= 1.5)}: a ce+nbc epoch took {nbc['x_ce']:.2f}x a ce epoch in this run "
                       "(target <= 1.5x; under the study's own load; benchmarks/training.py times it alone).")
        out.append("")
    return out


def section(name: str, out: Path, docs: Path) -> list[str]:
    report_dir = out / "report"
    report = json.loads((report_dir / "study.json").read_text())
    figures = docs / "results" / name
    if figures.exists():
        shutil.rmtree(figures)
    shutil.copytree(report_dir / "figures", figures)
    md = (report_dir / "study.md").read_text().replace("](figures/", f"](results/{name}/")
    body = md.split("\n", 1)[1].replace("\n## ", "\n### ")
    return [f"## `{name}`", "", f"`vfnn study {name}` (measured {date.today().isoformat()}):", body, "",
            "### NBC targets", "", *targets(report)]


def sections_of(page: str) -> dict[str, str]:
    """The ``## `name` `` sections of an existing results.md, by study name, in page order."""
    out = {}
    for chunk in page.split("\n## `")[1:]:
        name = chunk.split("`", 1)[0]
        out[name] = "## `" + chunk.rstrip("\n") + "\n"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DATA))
    ap.add_argument("--study", action="append", help="study names (default: nbc-mnist-fc, nbc-mnist-cnn, nbc-fashion)")
    ap.add_argument("--out", default=str(ROOT / "study-out"), help="where the studies' folders go")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    args = ap.parse_args()
    names = args.study or ["nbc-mnist-fc", "nbc-mnist-cnn", "nbc-fashion"]
    docs = Path(args.docs)
    page = docs / "results.md"
    # Sections of studies not run now stay as they are (each says when it was measured).
    sections = sections_of(page.read_text()) if page.exists() else {}
    head = ["# Results: does NBC make networks easier to verify?", "",
            f"Measured on {platform.machine()} with {__import__('os').cpu_count()} CPU cores (shared with other "
            f"work), Python {platform.python_version()}. Regenerate with `python benchmarks/studies.py --data-dir "
            "../shared/datasets [--study NAME ...]` (each study resumes where it stopped; delete its folder under "
            "study-out/ to start again; a study not named keeps its section). What was tried to meet the NBC "
            "targets, and the costs per epoch measured alone: [training.md](training.md#measured).", ""]
    for name in names:
        out = Path(args.out) / name
        problem = run_study(name, args.data_dir, out)
        if problem is None:
            sections[name] = "\n".join(section(name, out, docs)) + "\n"
        else:
            sections[name] = (f"## `{name}`\n\nNot measured here ({date.today().isoformat()}): `vfnn study {name}` "
                              f"stopped with `{problem}`.\n")
    page.write_text("\n".join(head) + "\n" + "\n".join(sections.values()))
    print(f"wrote {docs / 'results.md'}")


if __name__ == "__main__":
    main()
