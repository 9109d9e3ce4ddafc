"""The docs say what the code and the tests are: every test docs/fault-model.md names
exists, and every constant the docs quote with its value has that value in
``clickqueue``."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from functools import cache

import pytest

import clickqueue
from tests.support.processes import REPO_ROOT

DOCS = REPO_ROOT / "docs"
FAULT_MODEL = DOCS / "fault-model.md"
PROTOCOL = DOCS / "protocol.md"
QUOTING_CONSTANTS = sorted([*DOCS.glob("*.md"), REPO_ROOT / "README.md"])

TEST_FILE = re.compile(r"test_\w+\.py")
CITATION = re.compile(
    r"`(?:(?:tests/)?(?P<file>test_\w+\.py))?(?:::(?P<qualified>\w+)|(?P<bare>\btest_\w+\b)(?!\.py))?[^`]*`"
)
QUOTED_CONSTANT = re.compile(r"`(?P<name>[A-Z][A-Z0-9_]{2,})` \((?P<value>[0-9][0-9,_.]*)\)")
CONSTANT_NAME = re.compile(r"`(?P<name>[A-Z][A-Z0-9_]{2,})`")


@cache
def names_defined_in(test_file: str) -> frozenset[str]:
    """Every function and class name in ``tests/<test_file>``, at any depth."""
    tree = ast.parse((REPO_ROOT / "tests" / test_file).read_text())
    return frozenset(
        node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    )


def cited_tests(text: str) -> list[tuple[int, str, str]]:
    """(line, file, name) of each test the text names: ``test_x.py::name``; ``::name``
    after a file on the same line; a bare ``test_name`` in the file its line, table
    header or section heading names last."""
    cited = []
    section_file = ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#") or line.startswith("| claim"):
            section_file = next(iter(TEST_FILE.findall(line)), section_file)
            continue
        line_file = section_file
        for match in CITATION.finditer(line):
            if match["file"]:
                line_file = match["file"]
            name = match["qualified"] or match["bare"]
            if name:
                cited.append((number, line_file, name))
    return cited


def test_every_test_the_fault_model_names_exists():
    cited = cited_tests(FAULT_MODEL.read_text())
    missing = [
        f"line {number}: {test_file}::{name}"
        for number, test_file, name in cited
        if not test_file or not (REPO_ROOT / "tests" / test_file).exists() or name not in names_defined_in(test_file)
    ]

    assert len(cited) > 100
    assert missing == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("`test_a.py::test_one`, `::test_two`", [("test_a.py", "test_one"), ("test_a.py", "test_two")]),
        ("`test_a.py` (all of it); `test_b.py::helper`", [("test_b.py", "helper")]),
        ("`test_bare_name` [backends]", [("test_section.py", "test_bare_name")]),
        ("`World.slots_handed_out`, `written == read`", []),
    ],
    ids=["qualified", "file-then-helper", "bare-in-section", "not-tests"],
)
def test_citations_are_read_as_file_and_name(text, found):
    cited = cited_tests(f"## Races (`tests/test_section.py`)\n{text}")

    assert [(test_file, name) for _line, test_file, name in cited] == found


@cache
def library_constants() -> dict[str, object]:
    """Every upper-case module attribute of every ``clickqueue`` module, by name."""
    constants: dict[str, object] = {}
    for module_info in pkgutil.iter_modules(clickqueue.__path__):
        module = importlib.import_module(f"clickqueue.{module_info.name}")
        constants.update({name: value for name, value in vars(module).items() if name.isupper()})
    return constants


@pytest.mark.parametrize("document", QUOTING_CONSTANTS, ids=lambda path: path.name)
def test_every_constant_quoted_with_its_value_has_that_value(document):
    quoted = [
        (match["name"], match["value"])
        for match in QUOTED_CONSTANT.finditer(document.read_text())
        if match["name"] in library_constants() or document == PROTOCOL
    ]
    wrong = [
        f"{name} ({value}): the code has {library_constants().get(name, 'no such constant')}"
        for name, value in quoted
        if library_constants().get(name) != float(value.replace(",", "").replace("_", ""))
    ]

    assert wrong == []


def test_the_protocol_quotes_its_limits_with_their_values():
    quoted = {match["name"] for match in QUOTED_CONSTANT.finditer(PROTOCOL.read_text())}

    limits = {"MAX_CACHE_CALLS_PER_CALL", "REPAIR_MARGIN", "RECOVERY_SLOTS", "MAX_CLAIM_ITEMS", "FRAME_MESSAGES"}
    assert limits <= quoted


def test_every_constant_the_protocol_names_exists_in_the_library():
    named = {match["name"] for match in CONSTANT_NAME.finditer(PROTOCOL.read_text())}

    assert sorted(named - library_constants().keys()) == []


def test_the_protocol_has_its_parts_in_order():
    headings = [line for line in PROTOCOL.read_text().splitlines() if line.startswith("## ")]

    assert headings == [
        "## Glossary",
        "## Slot layout",
        "## Invariants, and why they hold",
        "## Limits (what cannot be promised)",
    ]


PROTOCOL_MODULES = ["queue", "writing", "claiming", "taking", "leases", "slots", "context"]


@pytest.mark.parametrize("module", PROTOCOL_MODULES)
def test_each_step_points_to_the_protocol_instead_of_restating_it(module):
    """Each step's docstring says how its step works and points to docs/protocol.md;
    invariants and limits are written there only."""
    docstring = ast.get_docstring(ast.parse((REPO_ROOT / "clickqueue" / f"{module}.py").read_text())) or ""

    assert "docs/protocol.md" in docstring
    assert "Invariants" not in docstring and "Limits" not in docstring
