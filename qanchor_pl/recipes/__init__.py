"""The shipped recipes (package data), found from any working directory.

``--config pretrain/tiny-cpu`` (or ``pretrain/tiny-cpu.yaml``) names a recipe here when no such
file exists where the command runs; a path that exists always wins. Recipes compose: several
``--config`` apply in order, later keys over earlier ones (a base per stage, then overlays for
model size, strategy and cluster under ``<stage>/overlay/``). ``COMPOSITIONS`` lists the
documented ones; a test loads every recipe and every composition.
"""

from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).parent

# name -> the recipes it stacks, in order (the 64-GPU runs are overlays on the one-GPU base)
COMPOSITIONS: dict[str, list[str]] = {
    "pretrain qwen0.5b 64xA100 DDP": ["pretrain/qwen0.5b-1gpu", "pretrain/overlay/64xa100"],
    "pretrain qwen0.5b 64xA100 ZeRO-2": [
        "pretrain/qwen0.5b-1gpu", "pretrain/overlay/64xa100", "pretrain/overlay/zero2"],
    "pretrain qwen1.5b 64xA100 ZeRO-3": [
        "pretrain/qwen0.5b-1gpu", "pretrain/overlay/qwen1.5b", "pretrain/overlay/64xa100",
        "pretrain/overlay/zero3"],
    "pretrain qwen3b 64xA100 ZeRO-3": [
        "pretrain/qwen0.5b-1gpu", "pretrain/overlay/qwen3b", "pretrain/overlay/64xa100",
        "pretrain/overlay/zero3"],
    "pretrain qwen3b 64xA100 DDP, gradient cache": [
        "pretrain/qwen0.5b-1gpu", "pretrain/overlay/qwen3b", "pretrain/overlay/64xa100",
        "pretrain/overlay/grad-cache"],
    "pretrain tiny on 2 CPU processes (DDP, gloo)": ["pretrain/tiny-cpu", "pretrain/overlay/cpu-ddp2"],
}  # fmt: skip


def recipe_names() -> list[str]:
    """Every shipped recipe as ``stage/name`` (overlays as ``stage/overlay/name``)."""
    return sorted(p.relative_to(RECIPES).with_suffix("").as_posix() for p in RECIPES.rglob("*.yaml"))


def find_recipe(name: str) -> Path:
    """A recipe file: ``name`` itself if it exists, else the shipped recipe of that name."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (RECIPES / name, RECIPES / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    if name.startswith("recipes/"):  # the old top-level path, from another working directory
        return find_recipe(name.removeprefix("recipes/"))
    raise FileNotFoundError(
        f"--config {name}: no such file, and no shipped recipe of that name (shipped: {', '.join(recipe_names())})"
    )


def _looks_like_path(value: str) -> bool:
    return not any(ch in value for ch in "\n{}[]") and ": " not in value


def resolve_config_args(argv: list[str]) -> list[str]:
    """Every ``--config NAME`` / ``--config=NAME`` in ``argv`` with NAME resolved to a file."""
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--config" and i + 1 < len(argv) and _looks_like_path(argv[i + 1]):
            out += [token, str(find_recipe(argv[i + 1]))]
            i += 2
            continue
        if token.startswith("--config=") and _looks_like_path(token[9:]):
            token = "--config=" + str(find_recipe(token[9:]))
        out.append(token)
        i += 1
    return out
