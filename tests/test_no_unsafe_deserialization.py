"""No pickle/torch.load/eval/marshal on anything: the project never deserializes code-bearing formats.

Scans every Python file of the project except tests/ and virtualenvs, so a new module that
reaches for `pickle.loads` (or similar) fails CI instead of shipping a remote-code hole.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"tests", ".venv", "venv", ".git", "build", "dist", "node_modules", "__pycache__"}
FORBIDDEN = [
    re.compile(r"\bpickle\.loads?\s*\("),
    re.compile(r"\bcPickle\b"),
    re.compile(r"\btorch\.load\s*\("),
    re.compile(r"(?<![\w.])eval\s*\("),
    re.compile(r"\bmarshal\.loads?\s*\("),
    re.compile(r"\bdill\.loads?\s*\("),
    re.compile(r"\bjoblib\.load\s*\("),
    re.compile(r"allow_pickle\s*=\s*True"),
    re.compile(r"\bUnpickler\b"),
]


def _project_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        files.append(path)
    return files


def test_scanner_sees_the_packages():
    names = {p.relative_to(ROOT).parts[0] for p in _project_files()}
    assert {"consensus", "subnet", "keys", "chain"} <= names


def test_no_unsafe_deserialization():
    hits = []
    for path in _project_files():
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern in FORBIDDEN:
                if pattern.search(code):
                    hits.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not hits, "unsafe deserialization found:\n" + "\n".join(hits)


def test_patterns_catch_the_usual_suspects():
    samples = ["x = pickle.loads(data)", "torch.load(f)", "eval(s)", "marshal.loads(b)",
               "np.load(p, allow_pickle=True)"]
    for s in samples:
        assert any(p.search(s) for p in FORBIDDEN), s
    assert not any(p.search("model.eval()") for p in FORBIDDEN)
    assert not any(p.search("literal_eval_ish = 1") for p in FORBIDDEN)
