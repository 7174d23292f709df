"""Export tab: save the current plan as JSON (stamped with the model's fingerprint), download it,
and build the ONNX model with its verification report (`workbench.export.apply_plan`, what
`workbench apply` runs) as a job of the engine's queue (USER priority). The job holds RUN_LOCK
while it runs and lets go of it between two stages of the export (workbench.export.apply.STAGES),
so a slider's evaluation gets in there and never runs during the export's latency timing; the
cancel button calls Job.cancel, and the export stops before its next stage, leaving the output
folder as it was (the export is built in a staging folder and moved into place at the end).

A plan that removes structure (pruning, low rank) is best recovered first: in the Recover tab
(a cancellable job with a live plot), then "use as baseline"; the export then holds the recovered
model with the plan's quantization. (It used to recover inside the export, holding the run lock
for up to 10 minutes: review7 finding 3.)
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import ipywidgets as widgets

from workbench.engine.jobs import JOBS, RUN_LOCK, USER, Job
from workbench.ui.controller import Controller
from workbench.ui.view import LazyView
from workbench.compress.resolution import plan_for_model

def export_verb():
    """`workbench.export.apply_plan` and its options class, or None if the export is missing."""
    try:
        from workbench.export import ApplyOptions, apply_plan
    except ImportError:
        return None
    return apply_plan, ApplyOptions


class ExportTab(LazyView):
    def __init__(self, controller: Controller) -> None:
        super().__init__(controller.errors, "the plan export")
        self.controller = controller
        self.state = controller.state
        self.core = controller.core
        g = controller.errors.guard
        self.path = widgets.Text("plan.json", description="plan file",
                                 layout=widgets.Layout(width="420px"))
        self.path.add_class("wb-export-path")
        self.save_button = save = widgets.Button(description="save plan JSON",
                                                 button_style="primary")
        save.add_class("wb-export-save")
        self.status = widgets.HTML()
        self.status.add_class("wb-export-status")
        self.download = widgets.HTML()
        self.download.add_class("wb-export-download")
        self.json = widgets.Textarea(disabled=True, layout=widgets.Layout(width="100%",
                                                                           height="260px"))
        self.json.add_class("wb-plan-json")
        self.out_dir = widgets.Text("out/export", description="ONNX folder",
                                    style={"description_width": "initial"},
                                    layout=widgets.Layout(width="420px"))
        self.out_dir.add_class("wb-export-dir")
        self.force = widgets.Checkbox(False, description="replace the folder if it exists")
        self.force.add_class("wb-export-force")
        self.recover_hint = widgets.HTML()
        self.recover_hint.add_class("wb-export-recover-hint")
        self.worker: Job | None = None
        self.onnx = widgets.Button(description="export ONNX + report")
        self.onnx.add_class("wb-export-onnx")
        self.cancel_button = widgets.Button(description="cancel export", disabled=True)
        self.cancel_button.add_class("wb-export-cancel")
        self.onnx_status = widgets.HTML()
        self.onnx_status.add_class("wb-export-onnx-status")
        save.on_click(g("saving the plan", lambda _b: self.save()))
        self.onnx.on_click(g("exporting", lambda _b: self.start_export()))
        self.cancel_button.on_click(g("cancelling the export", lambda _b: self.cancel()))
        self.state.observe(g("showing the plan JSON", lambda _c: self.invalidate()),
                           names=["plan"])
        self.widget = widgets.VBox([widgets.HBox([self.path, save]), self.status, self.download,
                                    self.json,
                                    widgets.HBox([self.out_dir, self.force, self.onnx,
                                                  self.cancel_button]),
                                    self.recover_hint,
                                    self.onnx_status])
        self.widget.add_class("wb-export")

    def plan_json(self) -> str:
        return plan_for_model(self.state.plan, self.core.model).to_json()

    def draw(self) -> None:
        text = self.plan_json()
        self.json.value = text
        data = base64.b64encode(text.encode()).decode()
        self.download.value = (f"<a download='plan.json' href='data:application/json;base64,"
                               f"{data}'>download plan.json</a>")
        from workbench.recovery import removes_structure
        if removes_structure(self.state.plan, self.core.model):
            self.recover_hint.value = (
                "<span class='wb-muted'>This plan removes structure. Without recovery the "
                "exported model keeps the accuracy shown above (often much worse than the "
                "original); recover it in the <i>Recover</i> tab and press <i>use as "
                "baseline</i> first, or run <code>workbench recover</code>."
                "</span>")
        else:
            self.recover_hint.value = ("<span class='wb-muted'>Nothing to recover: this plan "
                                       "removes no structure.</span>")
        if export_verb() is None:
            self.onnx.disabled = True
            self.onnx_status.value = ("<span class='wb-muted'>ONNX export: not available in this "
                                      "version (use `workbench apply --plan plan.json`).</span>")

    def save(self) -> Path:
        path = Path(self.path.value).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.plan_json())
        self.status.value = f"saved <code>{html.escape(str(path.resolve()))}</code>"
        return path

    def start_export(self) -> Job:
        verb = export_verb()
        if verb is None:
            raise RuntimeError("the ONNX export is not available in this version.")
        apply_plan, options_cls = verb
        from workbench.export.apply import STAGES, summary_lines  # loaded with the export (onnx)
        model = self.core.model
        plan = plan_for_model(self.state.plan, model)
        out = Path(self.out_dir.value).expanduser()
        # Verify on as many utterances as the app evaluates, so the export takes about as long.
        options = options_cls(overwrite=self.force.value,
                              eval_limit=len(self.controller.session.eval_set))
        self.onnx.disabled = True
        self.cancel_button.disabled = False
        self.onnx_status.value = ("exporting and verifying in the background (ONNX Runtime "
                                  "measurements; WER updates wait for the current stage)…")

        def run(job: Job) -> dict:
            def between(stage: str) -> None:
                # Called with the lock held, between two stages: report, let a waiting model run
                # (a slider's evaluation, higher priority) go first, then stop here if cancelled.
                job.progress(STAGES.index(stage), len(STAGES))
                RUN_LOCK.release()
                RUN_LOCK.acquire(USER)
                job.check()

            with RUN_LOCK.hold(USER):
                job.check()
                return apply_plan(model, plan, out, options, between=between)

        def progress(done: int, total: int) -> None:
            self.onnx_status.value = (f"exporting: {html.escape(STAGES[done])} (stage {done + 1} "
                                      f"of at most {total})…")

        def finished(report: dict | None) -> None:
            self.onnx.disabled, self.cancel_button.disabled = False, True
            if report is None:
                self.onnx_status.value = (f"export cancelled; <code>{html.escape(str(out))}"
                                          f"</code> left as it was")
                return
            lines = "\n".join(summary_lines(report))
            self.onnx_status.value = (f"exported to <code>{html.escape(str(out))}</code> "
                                      f"(model.onnx, report.json, MODEL_CARD.md)"
                                      f"<pre>{html.escape(lines)}</pre>")

        def failed(err: BaseException) -> None:
            self.onnx.disabled, self.cancel_button.disabled = False, True
            self.onnx_status.value = "export failed (see the error above)"
            self.controller.errors.show(err, "exporting")

        g = self.controller.errors.guard
        self.worker = JOBS.submit(run, name="export", priority=USER,
                                  on_progress=g("showing the export's progress", progress),
                                  on_done=g("exporting", finished), on_error=failed)
        return self.worker

    def cancel(self) -> None:
        """Stop the running export before its next stage (nothing is written)."""
        if self.worker is not None and self.worker.running:
            self.worker.cancel()
            self.cancel_button.disabled = True
            self.onnx_status.value = "cancelling: the export stops before its next stage…"
