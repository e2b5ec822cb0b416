"""Readable summaries of built components: the module tree with parameter counts, trainable vs frozen."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.tree import Tree


def human_count(count: int) -> str:
    """`1234567 -> '1.23M'`."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def parameter_counts(module: Any) -> tuple[int, int]:
    """`(total, trainable)` parameters of a torch module, each shared tensor counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for parameter in module.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return total, trainable


def _component_name(module: Any) -> str | None:
    config = getattr(module, "config", None)
    name = getattr(config, "name", None)
    return name if isinstance(name, str) else None


def describe(module: Any) -> str:
    """`TinyViT [omnimm/tiny-vit]  72.3K params (72.3K trainable, 0 frozen)`."""
    label = type(module).__name__
    component = _component_name(module)
    if component:
        label += f" [{component}]"
    if not hasattr(module, "parameters"):
        return label
    total, trainable = parameter_counts(module)
    if total == 0:
        return f"{label}  no parameters"
    frozen = human_count(total - trainable)
    return f"{label}  {human_count(total)} params ({human_count(trainable)} trainable, {frozen} frozen)"


def _signature(module: Any) -> tuple[str, int, int]:
    return (type(module).__name__, *parameter_counts(module))


def module_tree(module: Any, *, label: str = "model", depth: int = 2) -> Tree:
    """A rich tree of `module` and its children down to `depth`; runs of identical siblings are folded."""
    tree = Tree(escape(f"{label}: {describe(module)}"))
    _add_children(tree, module, depth)
    return tree


def _add_children(tree: Tree, module: Any, depth: int) -> None:
    if depth <= 0 or not hasattr(module, "named_children"):
        return
    children = list(module.named_children())
    index = 0
    while index < len(children):
        name, child = children[index]
        run = 1
        while index + run < len(children) and _signature(children[index + run][1]) == _signature(child):
            run += 1
        if run >= 3:  # e.g. 12 identical transformer layers: one line, not twelve
            last = children[index + run - 1][0]
            branch = tree.add(escape(f"{name}..{last}: {run} x {describe(child)}"))
            _add_children(branch, child, depth - 1)
        else:
            for offset in range(run):
                sibling_name, sibling = children[index + offset]
                _add_children(tree.add(escape(f"{sibling_name}: {describe(sibling)}")), sibling, depth - 1)
        index += run
