"""The import graph of src/, read with ast (no module is imported): no import cycles, every package imports only
the packages below it in ``LAYERS``, nothing below src.app imports src.app, nothing imports the top-level scripts.

Every import statement counts, also one inside a function: a deferred import still makes the module depend
on the imported one. ``import a.b.c`` is an edge to the most specific module of that name (``a.b.c``, or
``a.b`` when ``c`` is an attribute); ``from p import x`` is an edge to the submodule ``p.x`` if there is one,
else to ``p``. The implicit import of parent packages is no edge, so a package whose ``__init__`` imports its
own submodules is not a cycle.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = "src.app"
# Modules outside src/app allowed to import it: entry points of their own (an ``if __name__ == "__main__"``
# block), like the model-zoo conversion script src/pthtockpt.py.
ENTRY_POINTS = frozenset({"src.pthtockpt"})
# The packages of src/, lowest first: each may import only the ones before it (and src's own __init__, the
# environment set-up). The data flow config -> samples -> tiles -> features -> bank -> scores -> maps ->
# decisions -> metrics runs through them; config sits above the components it validates with and below the
# stages that read it.
LAYERS = ("utils", "data", "tiling", "backbones", "patchcore", "decisions", "config", "evaluation", "inference",
          "training", "deploy", "records", "app")


def module_name(path, root):
    """'src/a/b.py' -> 'src.a.b', 'src/a/__init__.py' -> 'src.a' (``root`` is the folder holding src/)."""
    parts = list(Path(path).relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(name, modules):
    """The most specific module in ``modules`` that the dotted ``name`` is or lies in, else None."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def module_imports(tree, module, is_package, modules):
    """(top-level name or None for a relative import, module as written, resolved module or None, line) per
    imported name; 'as written' is absolute, and names the submodule of ``from p import submodule``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], alias.name, resolve(alias.name, modules), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
                top = None
            else:
                prefix, top = node.module, node.module.split(".")[0]
            for alias in node.names:
                sub = f"{prefix}.{alias.name}"
                written = sub if sub in modules else prefix
                yield top, written, resolve(written, modules), node.lineno


def import_graph(root, package="src"):
    """{module: {imported module of the package: first line}}, {module: [(top-level name, line)]} and
    {module: [(module as written, line)]} (a written name can be a module that does not exist, or an attribute)."""
    paths = {module_name(path, root): path for path in sorted((Path(root) / package).rglob("*.py"))}
    edges, tops, written = {}, {}, {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges[module], tops[module], written[module] = {}, [], []
        for top, name, target, line in module_imports(tree, module, path.name == "__init__.py", paths):
            if top is not None:
                tops[module].append((top, line))
            written[module].append((name, line))
            if target is not None and target != module:
                edges[module][target] = min(line, edges[module].get(target, line))
        tops[module].sort(key=lambda item: item[1])      # ast.walk is breadth first: back to line order
        written[module].sort(key=lambda item: item[1])
    return edges, tops, written


def import_cycles(edges):
    """The strongly connected components with more than one module (Tarjan), each sorted; sorted."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(components)


def describe_cycle(component, edges):
    """'a -> b (line 3), b -> a (line 7)': the edges inside one strongly connected component."""
    members = set(component)
    return ", ".join(f"{source} -> {target} (line {line})" for source in component
                     for target, line in sorted(edges[source].items()) if target in members)


def upward_imports(written, app=APP, entry_points=ENTRY_POINTS):
    """['module -> src.app.x (line n)'] for modules outside ``app`` (and not entry points) importing it, the
    imported module named as written (it may not exist any more)."""
    inside = lambda name: name == app or name.startswith(app + ".")  # noqa: E731
    found = []
    for source, names in sorted(written.items()):
        if not inside(source) and source not in entry_points:
            for name, line in names:
                entry = f"{source} -> {name} (line {line})"
                if inside(name) and entry not in found:
                    found.append(entry)
    return found


def layer_violations(edges, layers=LAYERS, package="src"):
    """['module -> module (line n)'] for every import of a package at or above the importer's own layer in
    ``layers`` (imports inside one package are not checked here; cycles are)."""
    rank = {f"{package}.{name}": position for position, name in enumerate(layers)}

    def layer(module):
        parts = module.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else None

    found = []
    for source, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            own, other = layer(source), layer(target)
            if own in rank and other in rank and own != other and rank[other] > rank[own]:
                found.append(f"{source} -> {target} (line {line})")
    return found


def test_every_src_package_is_in_a_layer():
    packages = {path.parent.name for path in (ROOT / "src").glob("*/__init__.py")}
    assert packages == set(LAYERS)


def test_no_import_in_src_runs_back_up_the_layers():
    edges, _, _ = import_graph(ROOT)
    found = layer_violations(edges)
    assert not found, f"imports against the layer order {' < '.join(LAYERS)}:\n" + "\n".join(found)


def script_imports(tops, scripts):
    """['module imports script (line n)'] for absolute imports of the top-level scripts."""
    return [f"{module} imports {top} (line {line})" for module, names in sorted(tops.items())
            for top, line in names if top in scripts]


def top_level_scripts(root):
    return {path.stem for path in Path(root).glob("*.py")}


# ------------------------------------------------------------------------------------------ src/


def test_top_level_scripts_are_the_known_entry_points():
    assert {"train", "eval", "export", "preprocess", "postprocess", "generate_data"} <= top_level_scripts(ROOT)


def test_src_has_no_import_cycles():
    edges, _, _ = import_graph(ROOT)
    cycles = import_cycles(edges)
    assert not cycles, "import cycles in src/:\n" + "\n".join(describe_cycle(c, edges) for c in cycles)


def test_only_src_app_and_entry_points_import_src_app():
    _, _, written = import_graph(ROOT)
    found = upward_imports(written)
    assert not found, f"modules below {APP} import it:\n" + "\n".join(found)


def test_src_does_not_import_the_top_level_scripts():
    _, tops, _ = import_graph(ROOT)
    found = script_imports(tops, top_level_scripts(ROOT))
    assert not found, "src/ imports top-level scripts:\n" + "\n".join(found)


def nodes_outside(root, owner, package="src"):
    """('path:line', node) for every ast node of the modules of ``package`` outside ``owner`` (a module, or a
    package folder, relative to ``root``): where a rule's one owner is not."""
    owner = Path(root, owner)
    for path in sorted((Path(root) / package).rglob("*.py")):
        if path != owner and owner not in path.parents:
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                yield f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}", node


def sampler_type_checks(root, sampler_package="src/patchcore/sampling"):
    """'path:line' of every isinstance/issubclass call naming a ...Sampler class outside the sampler package."""
    return [where for where, node in nodes_outside(root, sampler_package)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass")
            and len(node.args) == 2 and "Sampler" in ast.unparse(node.args[1])]


# ------------------------------------------------------------------------------------------ the checker itself


def write_tree(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "src/__init__.py": "import os\n",
    "src/app/__init__.py": "",
    "src/app/cli.py": "from src.core import engine\nfrom src.core.engine import run\nimport src.app.helpers\n",
    "src/app/helpers.py": "import json\n",
    "src/core/__init__.py": "from src.core.engine import run\nfrom .util import helper\n",   # own submodules
    "src/core/engine.py": "from .util import helper\nfrom ..config import load\n\ndef run():\n    import numpy\n",
    "src/core/util.py": "import os.path\n\ndef helper():\n    pass\n",
    "src/config.py": "import yaml\n\ndef load():\n    pass\n",
    "src/pthtockpt.py": "from src.app.cli import main\nif __name__ == '__main__':\n    main()\n",
    "train.py": "import src.app.cli\n",
}


def test_sampler_check_finds_a_class_test_outside_the_sampler_package(tmp_path):
    root = write_tree(tmp_path, {"src/patchcore/sampling/a.py": "isinstance(s, RandomSampler)\n",
                                 "src/patchcore/detector.py": "x = 1\nif isinstance(s, (mod.GreedySampler, int)):\n"
                                                              "    pass\n"})
    assert sampler_type_checks(root) == ["src/patchcore/detector.py:2"]


def test_checker_resolves_absolute_relative_and_attribute_imports(tmp_path):
    edges, tops, written = import_graph(write_tree(tmp_path, CLEAN))
    assert edges["src.app.cli"] == {"src.core.engine": 1, "src.app.helpers": 3}
    assert edges["src.core"] == {"src.core.engine": 1, "src.core.util": 2}
    assert edges["src.core.engine"] == {"src.core.util": 1, "src.config": 2}
    assert edges["src.pthtockpt"] == {"src.app.cli": 1}
    assert tops["src.core.engine"] == [("numpy", 5)]   # relative imports are not top-level names
    assert written["src.core.engine"] == [("src.core.util", 1), ("src.config", 2), ("numpy", 5)]
    assert "train" not in edges  # the scripts are not part of the graph


def test_checker_passes_a_clean_tree(tmp_path):
    edges, tops, written = import_graph(write_tree(tmp_path, CLEAN))
    assert import_cycles(edges) == []
    assert upward_imports(written) == []   # src.pthtockpt is an entry point
    assert script_imports(tops, top_level_scripts(tmp_path)) == []


def test_checker_finds_a_cycle_also_through_a_deferred_import(tmp_path):
    files = dict(CLEAN)
    files["src/core/util.py"] = "def helper():\n    from src.core.engine import run\n"
    edges, _, _ = import_graph(write_tree(tmp_path, files))
    cycles = import_cycles(edges)
    assert cycles == [["src.core.engine", "src.core.util"]]
    assert describe_cycle(cycles[0], edges) == \
        "src.core.engine -> src.core.util (line 1), src.core.util -> src.core.engine (line 2)"


def test_checker_finds_upward_and_script_imports(tmp_path):
    files = dict(CLEAN)
    files["src/core/util.py"] = ("import train\nfrom eval import main\n\ndef helper():\n    import src.app.cli as c\n"
                                 "    from src.app.gone import thing\n")
    edges, tops, written = import_graph(write_tree(tmp_path, files))
    assert upward_imports(written) == ["src.core.util -> src.app.cli (line 5)",
                                       "src.core.util -> src.app.gone (line 6)"]   # as written, though missing
    assert edges["src.core.util"] == {"src.app.cli": 5, "src.app": 6}
    assert upward_imports(written, entry_points=frozenset()) == ["src.core.util -> src.app.cli (line 5)",
                                                                 "src.core.util -> src.app.gone (line 6)",
                                                                 "src.pthtockpt -> src.app.cli (line 1)"]
    (tmp_path / "eval.py").write_text("")
    assert script_imports(tops, top_level_scripts(tmp_path)) == ["src.core.util imports train (line 1)",
                                                                 "src.core.util imports eval (line 2)"]


def test_checker_finds_an_import_back_up_the_layers(tmp_path):
    files = {"src/__init__.py": "", "src/low/__init__.py": "", "src/low/a.py": "import os\n",
             "src/high/__init__.py": "", "src/high/c.py": "from src.low.a import x\n",
             "src/mid/__init__.py": "", "src/mid/b.py": "from src.low import a\n\ndef f():\n    from src.high.c import y\n"}
    edges, _, _ = import_graph(write_tree(tmp_path, files))
    assert layer_violations(edges, ("low", "mid", "high")) == ["src.mid.b -> src.high.c (line 4)"]   # deferred too
    assert layer_violations(edges, ("low", "high", "mid")) == []


# ------------------------------------------------------------------------------------------ one way to do a thing


def registry_errors(root, registry_module="src/utils/registry.py"):
    """'path:line' of every f-string shaped like a name lookup's error, "unknown <what> {name!r}", outside the
    registry module: a component chosen by name must be looked up through ``src.utils.registry.Registry``."""
    def lookup_error(node):
        parts = node.values if isinstance(node, ast.JoinedStr) else []
        return any(isinstance(text, ast.Constant) and "unknown " in str(text.value) and
                   isinstance(value, ast.FormattedValue) and value.conversion == ord("r")
                   for text, value in zip(parts, parts[1:]))
    return [where for where, node in nodes_outside(root, registry_module) if lookup_error(node)]


def test_registry_check_finds_a_lookup_of_its_own(tmp_path):
    root = write_tree(tmp_path, {
        "src/utils/registry.py": "def canonical(what, name):\n    raise KeyError(f'unknown {what} {name!r}')\n",
        "src/patchcore/scoring.py": "def build(name):\n    if name not in POLICIES:\n"
                                    "        raise InputError('policy', f'unknown policy {name!r}')\n",
        "src/config/hr.py": "raise InputError('val_config', f'unknown entries {sorted(keys)}')\n"})
    assert registry_errors(root) == ["src/patchcore/scoring.py:3"]


def threshold_comparisons(root, decisions_package="src/decisions"):
    """'path:line' of every ordering comparison of a score or a map with a threshold outside the decisions
    package: an image or a pixel is judged anomalous in one place (``src.decisions.thresholds.flagged``)."""
    def score_meets_threshold(node):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, (ast.Gt, ast.GtE, ast.Lt, ast.LtE))
                                                        for op in node.ops):
            return False
        operands = [ast.unparse(operand).lower() for operand in [node.left, *node.comparators]]
        return any("threshold" in text for text in operands) and \
            any("score" in text or "map" in text for text in operands)
    return [where for where, node in nodes_outside(root, decisions_package) if score_meets_threshold(node)]


@pytest.mark.parametrize("check, rule", [
    (sampler_type_checks, "samplers are used through their interface, their classes checked only in "
                          "src/patchcore/sampling"),
    (registry_errors, "components chosen by name are looked up only through src/utils/registry.py"),
    (threshold_comparisons, "scores meet thresholds only in src/decisions")])
def test_each_recurring_thing_is_done_in_its_one_place(check, rule):
    found = check(ROOT)
    assert not found, f"{rule}; not at:\n" + "\n".join(found)


def test_threshold_check_finds_a_comparison_of_its_own(tmp_path):
    root = write_tree(tmp_path, {
        "src/decisions/thresholds.py": "def flagged(scores, threshold):\n    return scores >= threshold\n",
        "src/evaluation/metrics.py": "x = 1\nflags = np.asarray(scores) >= thresholds['image']\n",
        "src/inference/predict.py": "ng = 'NG' if threshold < raw_score else 'OK'\n",
        "src/tiling/tasks.py": "ok = -1.0 <= cluster_threshold <= 1.0\n"})
    assert threshold_comparisons(root) == ["src/evaluation/metrics.py:2", "src/inference/predict.py:1"]
