"""`vfnn demo` (what `make demo` runs): the shipped quick study end to end, then a gate; re-running resumes."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET


def test_demo_runs_the_whole_story(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "vfnn", "demo", "--out", str(out)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = out / "runs" / "digits" / "fc-128x3"
    for label in ("ce", "ce+nbc"):
        config = json.loads((runs / label / "s0" / "config.json").read_text())
        assert (runs / label / "s0" / "model.onnx").is_file()
        assert config["phases"][0]["regs"] == (["nbc"] if label == "ce+nbc" else [])
    results = [json.loads(line) for line in (out / "campaign" / "digits" / "results.jsonl").read_text().splitlines()]
    assert results and all(r["result"]["status"] in ("sat", "unsat", "timeout") for r in results)
    report = json.loads((out / "report" / "study.json").read_text())
    rows = {(r["recipe"], r["eps"]): r for r in report["verification"]}
    radii = sorted({eps for _, eps in rows})
    assert len(radii) == 4 and all(rows[("ce", e)]["n"] == rows[("ce+nbc", e)]["n"] == 20 for e in radii)
    # NBC's networks have fewer unstable neurons than CE's at every radius (deterministic CPU training).
    assert all(rows[("ce+nbc", e)]["unstable"] < rows[("ce", e)]["unstable"] for e in radii)
    figures = {p.name for p in (out / "report" / "figures").iterdir()}
    assert {"unsat_vs_eps_digits_fc-128x3_milp.png", "cactus_digits_fc-128x3_milp.png"} <= figures
    assert "Properties proved (UNSAT %) by radius" in proc.stdout
    suite = ET.parse(out / "junit.xml").getroot()
    assert int(suite.get("tests")) == len({(r["onnx"], r["vnnlib"]) for r in results})
    # Re-running resumes: nothing is trained or verified again.
    again = subprocess.run([sys.executable, "-m", "vfnn", "demo", "--out", str(out)], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "2 of 2 models already trained" in again.stderr
    assert len((out / "campaign" / "digits" / "results.jsonl").read_text().splitlines()) == len(results)
