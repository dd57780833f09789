"""`vfnn demo` (what `make demo` runs) works end to end, on tiny settings."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET


def test_demo_runs_the_whole_story(tmp_path):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--epochs", "3", "--per-class", "1", "--eps", "0.02", "-v", "milp", "--timeout", "20"]
    proc = subprocess.run([sys.executable, "-m", "vfnn", "demo", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for label in ("ce", "nbc"):
        config = json.loads((out / "runs" / label / "config.json").read_text())
        assert (out / "runs" / label / "model.onnx").is_file()
        assert config["phases"][0]["regs"] == (["nbc"] if label == "nbc" else [])
    results = [json.loads(line) for line in (out / "campaign" / "results.jsonl").read_text().splitlines()]
    assert results and all(r["result"]["status"] in ("sat", "unsat") for r in results)
    assert {"cactus.png", "verified_vs_eps.png"} <= {p.name for p in (out / "figures").iterdir()}
    suite = ET.parse(out / "junit.xml").getroot()
    assert int(suite.get("tests")) == len({(r["onnx"], r["vnnlib"]) for r in results})
    # Re-running resumes: nothing is trained or verified again.
    again = subprocess.run([sys.executable, "-m", "vfnn", "demo", *args], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "reusing" in again.stdout
    assert len((out / "campaign" / "results.jsonl").read_text().splitlines()) == len(results)
