"""Package-level promises: the core imports no UI or runtime libraries; the CLI's error contract."""
import subprocess
import sys


def test_import_workbench_loads_no_ui_or_runtime():
    code = ("import sys, workbench; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('ipywidgets', 'plotly', 'onnxruntime', 'anywidget')); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_exist():
    import workbench
    missing = [n for n in workbench.__all__ if not hasattr(workbench, n)]
    assert missing == []


def test_cli_bad_manifest_is_one_clear_line(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"audio_filepath": "a.flac", "duration": 1.0}\n')
    out = subprocess.run([sys.executable, "-m", "workbench", "eval", "--json", "--manifest", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "m.jsonl" in out.stderr and "text" in out.stderr and "Traceback" not in out.stderr
