"""The package's layers, read from the code's own imports (module level and inside functions):
a module may import modules of its own layer or below, never above. The layers, from the ground up,
are those of docs/architecture.md; a new upward import fails here with the file and the name."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "histaug_tf")

ENTRY_POINTS = {"prepare_data", "subset", "train_gan", "generate", "calc_metrics",
                "train_classifier", "experiment", "import_nvlabs", "predict"}
# apps/: the library behind entry point histaug_tf/NAME.py is histaug_tf/apps/NAME.py; these app
# modules have no entry point of their own
APP_HELPERS = {"report", "arms", "study_tables"}

LAYERS = [  # (layer, module prefixes), ground first
    ("common", ["histaug_tf.common", "histaug_tf"]),
    ("ops", ["histaug_tf.ops"]),
    ("data", ["histaug_tf.data", "histaug_tf.distribute", "histaug_tf.graph_cache",
              "histaug_tf.torchfile"]),
    ("metrics/classifier", ["histaug_tf.metrics", "histaug_tf.classifier"]),
    ("gan", ["histaug_tf.gan"]),
    ("interop", ["histaug_tf.interop"]),
    ("apps", ["histaug_tf.apps"]),
    ("entry points", [f"histaug_tf.{m}" for m in sorted(ENTRY_POINTS)]),
]


def layer_of(module):
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    return best[0]


def modules():
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield rel[:-len(".__init__")] if rel.endswith(".__init__") else rel, path


def imports(path, module):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    pkg = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # "from histaug_tf.gan import networks" imports a module
                yield node.lineno, f"{base}.{a.name}" if base == "histaug_tf" or (
                    base.count(".") == 1 and base.startswith("histaug_tf.")) else base


def test_no_import_runs_upward():
    found, upward = 0, []
    for module, path in modules():
        mine = layer_of(module)
        for line, name in imports(path, module):
            if not (name == "histaug_tf" or name.startswith("histaug_tf.")):
                continue
            found += 1
            theirs = layer_of(name)
            if theirs > mine:
                upward.append(f"{os.path.relpath(path, ROOT)}:{line}: {module} "
                              f"({LAYERS[mine][0]}) imports {name} ({LAYERS[theirs][0]})")
    assert found > 100  # the walk saw the package's imports
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_every_module_has_a_layer_and_entry_points_are_thin():
    for module, path in modules():
        layer_of(module)  # raises on a module outside every layer
        if module.split(".")[-1] in ENTRY_POINTS and module.count(".") == 1:
            n = sum(1 for ln in open(path, encoding="utf-8") if ln.strip())
            assert n <= 110, f"{path}: {n} lines; an entry point holds flags and one call"


def test_apps_are_named_after_their_entry_points():
    """One naming scheme: every module in apps/ is named after an entry point (or is a declared
    helper app), and an entry point imports from apps/ only its own ``apps.NAME``."""
    for module, path in modules():
        parts = module.split(".")
        if parts[:2] == ["histaug_tf", "apps"] and len(parts) == 3:
            assert parts[2] in ENTRY_POINTS | APP_HELPERS, \
                f"{path}: an app module must be named after its entry point histaug_tf/<NAME>.py"
        if len(parts) == 2 and parts[1] in ENTRY_POINTS:
            for line, name in imports(path, module):
                if name == "histaug_tf.apps" or name.startswith("histaug_tf.apps."):
                    assert name == f"histaug_tf.apps.{parts[1]}", \
                        f"{path}:{line}: entry point {parts[1]} imports {name}, not its own app"
