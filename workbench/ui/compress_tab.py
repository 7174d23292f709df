"""Compress tab: one row per layer grouped by block, group controls, presets, undo / redo,
importance heat maps.

Controls show the *resolved* plan (so presets and groups show on every row they reach) and write
explicit per-layer entries (workbench.ui.edits). While the rows are being synced to a new plan,
their observers ignore the changes they cause (`_syncing`), so showing a plan never edits it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import ipywidgets as widgets

from workbench.compress.prune import keep_indices
from workbench.compress.targets import Target, graph_groups
from workbench.compress.techniques import technique
from workbench.plan import STRUCTURE_FOR_KIND, LayerConfig, PruneConfig, QuantConfig
from workbench.ui import edits, figures
from workbench.ui.controller import Controller
from workbench.ui.css import control_class
from workbench.ui.live import FigureSlot
from workbench.ui.view import LazyView

PRUNE_STEP = 0.05
_BITS_OPTIONS = [("fp32", 32)] + [(f"{b} bit" if b != 16 else "fp16", b)
                                  for b in edits.BIT_CHOICES if b is not None]
_LABEL = widgets.Layout(width="290px")
_UNITS = {"attention": "heads", "ffn": "neurons", "conv_module": "channels"}


def _bits_value(cfg: LayerConfig | None) -> int:
    if cfg is None or cfg.quant is None or cfg.quant.weight_bits is None:
        return 32
    return cfg.quant.weight_bits


class LayerRow:
    """The controls of one target (see workbench.ui.edits for what each one writes)."""

    def __init__(self, tab: CompressTab, path: str, target: Target, module) -> None:
        self.path, self.target = path, target
        g = tab.errors.guard
        label = widgets.HTML(f"<span class='wb-row-label' title='{target.type_name}'>"
                             f"{path}</span>", layout=_LABEL)
        parts: list[widgets.Widget] = [label]
        self.prune = self.structure = self.bits = self.rank = None
        if target.kind in STRUCTURE_FOR_KIND:
            unit = _UNITS[target.kind]
            size = {"attention": "n_heads", "ffn": None, "conv_module": None}[target.kind]
            count = (tab.group_sizes[path] if path in tab.group_sizes  # found from the graph
                     else getattr(module, size) if size else module.fc1.out_features
                     if target.kind == "ffn" else module.depthwise.in_channels)
            label.value += f" <span class='wb-muted'>{count} {unit}</span>"
            self.prune = self._prune_slider(path)
            self.structure = widgets.Dropdown(options=[STRUCTURE_FOR_KIND[target.kind],
                                                       "unstructured"],
                                              layout=widgets.Layout(width="130px"))
            self.structure.add_class(control_class("structure", path))
            parts += [self.prune, self.structure]
        else:
            w = module.weight
            shape = f"{w.shape[1]}→{w.shape[0]}" if target.kind == "linear" else \
                f"{w.shape[1]}→{w.shape[0]} k{tuple(w.shape[2:])}"
            label.value += f" <span class='wb-muted'>{shape}</span>"
            self.bits = widgets.Dropdown(options=_BITS_OPTIONS, value=32,
                                         layout=widgets.Layout(width="95px"))
            self.bits.add_class(control_class("bits", path))
            parts.append(self.bits)
            if target.kind == "linear":
                full = min(w.shape[0], w.shape[1])
                self.rank = widgets.IntSlider(value=0, min=0, max=full, step=max(1, full // 48),
                                              description="rank", continuous_update=False,
                                              tooltip="low rank: singular values kept; 0 = full",
                                              layout=widgets.Layout(width="250px"),
                                              style={"description_width": "32px"})
                self.rank.add_class(control_class("rank", path))
                parts.append(self.rank)
            if edits.structured_parent(tab.targets, path) is None:
                self.prune = self._prune_slider(path)
                parts.append(self.prune)
        where = f"editing {path}"  # what an error in a callback names
        # Techniques registered beyond the built-in three get a generic control each.
        self.extra: dict[str, widgets.Dropdown] = {}
        for name in edits.controls_for(target):
            control = technique(name).control
            box = widgets.Dropdown(options=[("off" if v is None else str(v), v)
                                            for v in control.values],
                                   description=control.label, layout=widgets.Layout(width="170px"))
            box.add_class(control_class(name, path))
            box.observe(g(where, lambda c, n=name: tab.on_technique(self, n, c["new"])),
                        names=["value"])
            self.extra[name] = box
            parts.append(box)
        self.widget = widgets.HBox(parts)
        self.widget.add_class(control_class("row", path))
        if self.prune is not None:
            self.prune.observe(g(where, lambda c: tab.on_prune(self)), names=["value"])
        if self.structure is not None:
            self.structure.observe(g(where, lambda c: tab.on_prune(self)), names=["value"])
        if self.bits is not None:
            self.bits.observe(g(where, lambda c: tab.on_bits(self, c["new"])), names=["value"])
        if self.rank is not None:
            self.rank.observe(g(where, lambda c: tab.on_rank(self, c["new"])), names=["value"])

    @staticmethod
    def _prune_slider(path: str) -> widgets.FloatSlider:
        s = widgets.FloatSlider(value=0.0, min=0.0, max=0.95, step=PRUNE_STEP,
                                description="prune", continuous_update=False,
                                readout_format=".2f", layout=widgets.Layout(width="260px"),
                                style={"description_width": "40px"})
        s.add_class(control_class("prune", path))
        return s

    def show(self, plan, resolved: dict[str, LayerConfig], targets: dict[str, Target]) -> None:
        cfg = resolved.get(self.path)
        if self.structure is not None:
            amount, structure = edits.prune_shown(plan, resolved, targets, self.path)
            self.structure.value = structure
            self.prune.value = amount
        elif self.prune is not None:
            self.prune.value = cfg.prune.amount if cfg is not None and cfg.prune else 0.0
        if self.bits is not None:
            self.bits.value = _bits_value(cfg)
        if self.rank is not None:
            self.rank.value = cfg.rank if cfg is not None and cfg.rank is not None else 0
        for name, box in self.extra.items():
            tech = technique(name)
            box.value = tech.control.from_setting(tech.setting(cfg) if cfg is not None else None)


class CompressTab(LazyView):
    """See the module docstring."""

    def __init__(self, controller: Controller) -> None:
        super().__init__(controller.errors, "the layer controls")
        self.controller = controller
        self.state = controller.state
        self.core = controller.core
        self.errors = controller.errors
        self.targets = self.core.targets
        self._syncing = False
        model = self.core.model
        # units per group for models whose groups were found from the graph (workbench.byo)
        self.group_sizes = {p: g.size for p, g in graph_groups(model).items()}
        self.rows = {p: LayerRow(self, p, t, model.get_submodule(p)) for p, t in self.targets.items()}
        self.widget = widgets.VBox([self._toolbar(), self._groups(), self._row_sections(),
                                    self._importance()])
        self.state.observe(self.errors.guard("showing the plan", lambda _c: self.invalidate()),
                           names=["plan"])
        self.state.observe(self.errors.guard("updating undo / redo", lambda _c: self._stacks()),
                           names=["undo_stack", "redo_stack"])
        self._stacks()

    # ---- layout ------------------------------------------------------------------------------
    def _toolbar(self) -> widgets.Widget:
        g = self.errors.guard
        self.presets = {p.name: p for p in edits.presets()}
        self.preset = widgets.Dropdown(options=list(self.presets), description="preset",
                                       layout=widgets.Layout(width="300px"))
        self.preset.add_class("wb-preset")
        self.preset_help = widgets.HTML()
        self.preset_help.add_class("wb-muted")
        apply = widgets.Button(description="apply preset", button_style="primary")
        apply.add_class("wb-preset-apply")
        self.undo = widgets.Button(description="undo", icon="undo")
        self.undo.add_class("wb-undo")
        self.redo = widgets.Button(description="redo", icon="repeat")
        self.redo.add_class("wb-redo")
        reset = widgets.Button(description="reset", icon="times")
        reset.add_class("wb-reset")
        self.preset.observe(g("choosing a preset", lambda _c: self._preset_help()),
                            names=["value"])
        apply.on_click(g("applying a preset", lambda _b: self.apply_preset(self.preset.value)))
        self.undo.on_click(g("undo", lambda _b: self.state.undo()))
        self.redo.on_click(g("redo", lambda _b: self.state.redo()))
        reset.on_click(g("reset", lambda _b: self.apply_preset("reset")))
        self._preset_help()
        return widgets.VBox([widgets.HBox([self.preset, apply, self.undo, self.redo, reset]),
                             self.preset_help])

    def _groups(self) -> widgets.Widget:
        g = self.errors.guard
        n_blocks = max((t.block for t in self.targets.values() if t.block is not None),
                       default=0) + 1
        roles = sorted({t.role for t in self.targets.values()},
                       key=lambda r: ["attention", "ffn", "conv", "front-end", "head"].index(r)
                       if r in ("attention", "ffn", "conv", "front-end", "head") else 9)
        self.group_role = widgets.Dropdown(options=roles, description="all",
                                           layout=widgets.Layout(width="190px"))
        self.group_role.add_class("wb-group-role")
        self.group_blocks = widgets.IntRangeSlider(value=(0, n_blocks - 1), min=0,
                                                   max=max(n_blocks - 1, 0),
                                                   description="blocks",
                                                   continuous_update=False,
                                                   layout=widgets.Layout(width="280px"))
        self.group_blocks.add_class("wb-group-blocks")
        self.group_bits = widgets.Dropdown(options=_BITS_OPTIONS, value=8, description="bits",
                                           layout=widgets.Layout(width="170px"))
        self.group_bits.add_class("wb-group-bits")
        set_bits = widgets.Button(description="set bits")
        set_bits.add_class("wb-group-set-bits")
        self.group_prune = widgets.FloatSlider(value=0.25, min=0, max=0.95, step=PRUNE_STEP,
                                               description="prune", readout_format=".2f",
                                               layout=widgets.Layout(width="260px"))
        self.group_prune.add_class("wb-group-prune")
        set_prune = widgets.Button(description="set structured pruning")
        set_prune.add_class("wb-group-set-prune")
        set_bits.on_click(g("setting group bits", lambda _b: self.apply_group("bits")))
        set_prune.on_click(g("setting group pruning", lambda _b: self.apply_group("prune")))
        return widgets.VBox([
            widgets.HTML("<b>Group controls</b> <span class='wb-muted'>(roles outside the "
                         "blocks — front-end, head — ignore the block range)</span>"),
            widgets.HBox([self.group_role, self.group_blocks]),
            widgets.HBox([self.group_bits, set_bits, self.group_prune, set_prune])])

    def _row_sections(self) -> widgets.Widget:
        sections: dict[str, list[widgets.Widget]] = {}
        for path, target in self.targets.items():
            name = (f"block {target.block}" if target.block is not None
                    else target.role)
            sections.setdefault(name, []).append(self.rows[path].widget)
        children = [widgets.HTML("<span class='wb-muted'>bits: weight precision · rank: "
                                 "singular values kept (0 = full rank) · prune: fraction "
                                 "removed (heads / neurons / channels are removed whole, "
                                 "which is what makes a CPU faster)</span>")]
        for name, rows in sections.items():
            children.append(widgets.HTML(f"<div class='wb-block-title'>{name}</div>"))
            children += rows
        box = widgets.VBox(children, layout=widgets.Layout(max_height="520px", overflow="auto",
                                                           border="1px solid #ddd",
                                                           padding="4px"))
        box.add_class("wb-layer-rows")
        return box

    def _importance(self) -> widgets.Widget:
        kinds = [k for k in ("attention", "ffn", "conv_module")
                 if any(t.kind == k for t in self.targets.values())]
        self.importance_kind = widgets.ToggleButtons(
            options=[(_UNITS[k], k) for k in kinds], description="importance of")
        self.importance_kind.add_class("wb-importance-kind")
        self.importance_fig = FigureSlot(240)
        self.importance_fig.widget.add_class("wb-importance")
        self.importance_kind.observe(self.errors.guard("drawing importance",
                                                       lambda _c: self._draw_importance()),
                                     names=["value"])
        return widgets.VBox([widgets.HTML("<b>Importance</b> <span class='wb-muted'>(L2 norm of "
                                          "each unit's weights; blank = removed by the plan)"
                                          "</span>"),
                             self.importance_kind, self.importance_fig.widget])

    # ---- plan -> controls --------------------------------------------------------------------
    @contextlib.contextmanager
    def _silenced(self) -> Iterator[None]:
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def draw(self) -> None:
        self.sync()

    def sync(self) -> None:
        """Show the current plan on every row (and the importance map)."""
        plan = self.state.plan
        resolved = self.core.resolve(plan)
        with self._silenced():
            for row in self.rows.values():
                row.show(plan, resolved, self.targets)
        self._draw_importance(resolved)

    def _stacks(self) -> None:
        self.undo.disabled = not self.state.undo_stack
        self.redo.disabled = not self.state.redo_stack
        self.undo.tooltip = (f"undo: {self.state.last_label}" if self.state.undo_stack else "")

    def _preset_help(self) -> None:
        self.preset_help.value = self.presets[self.preset.value].description

    # ---- controls -> plan --------------------------------------------------------------------
    def on_prune(self, row: LayerRow) -> None:
        if self._syncing:
            return
        structure = row.structure.value if row.structure is not None else "unstructured"
        amount = round(row.prune.value, 4)
        plan = edits.set_prune(self.state.plan, self.core.model, row.path, amount, structure)
        self._propose(plan, f"{row.path}: prune {amount:.2f} {structure}")

    def on_bits(self, row: LayerRow, bits: int) -> None:
        if self._syncing:
            return
        resolved = self.core.resolve(self.state.plan)
        plan = edits.set_bits(self.state.plan, row.path, None if bits == 32 else bits, resolved)
        self._propose(plan, f"{row.path}: {'fp32' if bits == 32 else f'{bits} bit'}")

    def on_rank(self, row: LayerRow, rank: int) -> None:
        if self._syncing:
            return
        plan = edits.set_rank(self.state.plan, row.path, rank or None)
        self._propose(plan, f"{row.path}: rank {rank or 'full'}")

    def on_technique(self, row: LayerRow, name: str, value) -> None:
        if self._syncing:
            return
        plan = edits.set_technique(self.state.plan, row.path, name, value)
        self._propose(plan, f"{row.path}: {name} {value}")

    def apply_preset(self, name: str) -> None:
        preset = self.presets[name]
        self._propose(preset.build(), f"preset: {name}")

    def apply_group(self, what: str) -> None:
        role = self.group_role.value
        lo, hi = self.group_blocks.value
        in_blocks = any(t.block is not None for t in self.targets.values() if t.role == role)
        blocks = range(lo, hi + 1) if in_blocks else None
        if what == "bits":
            bits = self.group_bits.value
            cfg = LayerConfig(quant=QuantConfig(weight_bits=None if bits == 32 else bits))
            label = f"all {role}: {'fp32' if bits == 32 else f'{bits} bit'}"
        else:
            kinds = {t.kind for t in self.targets.values()
                     if t.role == role and t.kind in STRUCTURE_FOR_KIND}
            if not kinds:
                raise ValueError(f"group pruning: role '{role}' has no attention / FFN / conv "
                                 f"module to prune structurally; pick attention, ffn or conv.")
            amount = round(self.group_prune.value, 4)
            cfg = LayerConfig(prune=PruneConfig(amount=amount,
                                                structure=STRUCTURE_FOR_KIND[min(kinds)]))
            label = f"all {role}: prune {amount:.2f}"
        if blocks is not None:
            label += f" (blocks {lo}–{hi})"
        plan = edits.apply_group(self.state.plan, self.core.model, role, blocks, cfg)
        self._propose(plan, label)

    def _propose(self, plan, label: str) -> None:
        try:
            self.controller.propose(plan, label)
        except Exception:
            self.sync()  # the rejected edit must not stay on screen
            raise

    # ---- importance --------------------------------------------------------------------------
    def _draw_importance(self, resolved: dict[str, LayerConfig] | None = None) -> None:
        kind = self.importance_kind.value
        if kind is None:
            return
        resolved = resolved if resolved is not None else self.core.resolve(self.state.plan)
        paths = [p for p, t in self.targets.items() if t.kind == kind]
        signature = (kind, tuple((p, resolved.get(p, LayerConfig()).prune) for p in paths))
        if signature == getattr(self, "_importance_drawn", None):
            return  # nothing this figure shows has changed
        self._importance_drawn = signature
        rows = []
        for p in paths:
            scores = self.core.importance(p)
            prune = resolved.get(p, LayerConfig()).prune
            values: list[float | None] = [float(v) for v in scores]
            if prune is not None and prune.amount > 0 and prune.structure != "unstructured":
                kept = set(keep_indices(scores, prune.amount).tolist())
                values = [v if i in kept else None for i, v in enumerate(values)]
            rows.append(values)
        self.importance_fig.show(figures.importance_strip(
            rows, paths, f"{_UNITS[kind]}: importance (magnitude)", _UNITS[kind]))
