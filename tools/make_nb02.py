"""Writes notebooks/02_editor_training.ipynb (kept so the notebook's source is reviewable as a script)."""
import nbformat as nbf

nb = nbf.v4.new_notebook()
md = lambda s: nbf.v4.new_markdown_cell(s.strip("\n"))
code = lambda s, **kw: nbf.v4.new_code_cell(s.strip("\n"), **kw)
cells = [
md(r"""
# 2. Training the editor: MEND and InstructEdit

**Overview.** This chapter trains the two multi-task editors the rest of the book compares: a **MEND** editor
trained on CounterFact, Recent and ConvSent at once, and an **InstructEdit** editor — the same hypernetwork and the
same data, but every edit carries a task instruction. It explains the method with its equations, trains both
editors for the chosen profile (or loads them when the run folder already holds them), plots training and validation
curves, checks both editors on held-out *test* records, and shows a few live edits.

Heavy steps write into the run folder (`<editor>/editor.safetensors`, `train_log.jsonl`, `val_log.jsonl`,
`cases_<editor>.jsonl`); rerunning the notebook resumes or loads instead of recomputing.
"""),
code(r"""
# Parameters (papermill injects the profile's values after this cell)
profile = "cpu"
run_dir = "runs/cpu/02_editor_training"
model_name = "smollm2-135m"
device = "cpu"
dtype = "float32"
num_threads = 2
data_dir = None
seed = 0
train_tasks = ["counterfact", "recent", "convsent"]
task_weights = None
rank = 256
n_blocks = 1
steps = 600
grad_accumulation = 1
lr = 1e-4
lr_lr = 1e-4
edit_lr = 1e-4
c_edit = 0.1
c_loc = 1.0
val_every = 150
val_records_per_task = 10
patience = 3
norm_warmup = 20
log_every = 10
sample_per_task = 25
batch_size = 16
live_edits = 3
""", metadata={"tags": ["parameters"]}),
code(r"""
%matplotlib inline
import json

import pandas as pd
from IPython.display import Markdown, display

from instructedit_utils import ExperimentConfig, setup_torch
from instructedit_utils import data, evaluation, models, plotting, training
from instructedit_utils.runs import RunFolder

cfg = ExperimentConfig.from_parameters(
    profile=profile, run_dir=run_dir, model_name=model_name, device=device, dtype=dtype, num_threads=num_threads,
    data_dir=data_dir, seed=seed, train_tasks=train_tasks, task_weights=task_weights, rank=rank, n_blocks=n_blocks,
    steps=steps, grad_accumulation=grad_accumulation, lr=lr, lr_lr=lr_lr, edit_lr=edit_lr, c_edit=c_edit,
    c_loc=c_loc, val_every=val_every, val_records_per_task=val_records_per_task, patience=patience,
    norm_warmup=norm_warmup, log_every=log_every, sample_per_task=sample_per_task, batch_size=batch_size,
    live_edits=live_edits, fluency_max_new_tokens=0, tasks=train_tasks,
)
setup_torch(cfg.model.num_threads, cfg.seed)
run = RunFolder(cfg.run_dir)
run.write_params(cfg.to_dict())
pd.set_option("display.max_colwidth", 80)
cfg.method
"""),
md(r"""
## MEND in four equations

Take one edited weight matrix $W \in \mathbb{R}^{d_\text{out}\times d_\text{in}}$ of an MLP (here the `up_proj` and
`down_proj` matrices of the last three blocks). For an edit — a prompt $x_e$ and a new target $y_e$ — the gradient of
the edit loss $L_e = -\log p_W(y_e \mid x_e)$ is a sum of rank-one terms, one per token $t$:

$$\nabla_W L_e = \sum_t \delta_t\, u_t^\top ,$$

where $u_t$ is the layer's input and $\delta_t = \partial L_e/\partial (W u_t)$ the gradient at its output. MEND never
forms this matrix. It normalises each $[u_t;\delta_t]$ with running statistics and maps it through a small network
$g_\phi$ — a residual low-rank MLP initialised to the identity, shared by all layers of the same shape, with a
per-layer scale and shift of its hidden units:

$$[\tilde u_t; \tilde\delta_t] = g_\phi\big(\mathrm{norm}([u_t;\delta_t]),\ \ell\big), \qquad
\tilde\nabla_W = \sum_t \tilde\delta_t\, \tilde u_t^\top .$$

The edit is one descent step with a learned step size $\alpha_\ell$ per matrix: $W' = W - \alpha_\ell\,\tilde\nabla_W$.
The editor is trained so that the edited model $W'$ gives the new target on **other phrasings** of the edit
(generalization) while changing nothing else (locality):

$$\mathcal{L}(\phi,\alpha) = c_\text{edit}\, L_\text{edit}\big(W'; x_e^\text{rephrase}, y_e\big)
 + c_\text{loc}\, \mathrm{KL}\big(p_W(\cdot\mid x_\text{loc}) \,\|\, p_{W'}(\cdot\mid x_\text{loc})\big).$$

For ConvSent, $L_\text{edit}$ is a likelihood/unlikelihood loss: responses of the requested sentiment should become
likely, responses of the opposite sentiment unlikely.

## What InstructEdit changes

Only the input. Every edit — the prompt whose gradient is transformed, and the rephrases it must generalise to — is
wrapped in an instruction (chapter 1): `Task: …`, `Description: …`, `Input: …`. During training each example draws
a fresh *seen* description of its task. The gradient of an instructed edit then carries the task in its $u_t$ (the
instruction tokens pass through the edited layers too), so one editor can learn task-specific updates. Locality
prompts are left without instruction: they are what the model should keep answering as before.

Everything else — network, losses, optimiser, data, steps — is identical for the two editors below.
"""),
code(r"""
model, tokenizer = models.load_model(cfg.model.name, cfg.model.device, cfg.model.dtype)
editor_configs = cfg.editor_configs()
targets = training.MendEditor.for_model(model, cfg.method, cfg.model.edit_layers).targets
display(pd.DataFrame([{"parameter": t.name, "shape": t.weight_shape, "network": t.shape_key} for t in targets]))
pd.DataFrame({name: m.to_dict() for name, m in editor_configs.items()}).loc[
    ["use_instructions", "tasks", "rank", "n_blocks", "steps", "lr", "lr_lr", "edit_lr", "c_edit", "c_loc",
     "val_every", "patience"]]
"""),
md(r"""
## Training both editors

Each step draws a task (uniformly unless `task_weights` says otherwise), the next record of that task's training
split and — for InstructEdit — a seen description; edits are applied functionally, so the base model is never
modified. Validation runs every `val_every` steps on the tasks' *validation* splits (disjoint from training), and the
best editor by `val/score` (mean of Reliability, Generalization and Locality over tasks) is kept. If the run folder
already holds a finished editor with the same configuration it is loaded instead.
"""),
code(r"""
results = {
    name: training.train_editor(model, tokenizer, method, run.path / name, edit_layers=cfg.model.edit_layers,
                                data_dir=cfg.data_dir, progress=False)
    for name, method in editor_configs.items()
}
pd.DataFrame({name: r.summary for name, r in results.items()}).T
"""),
md(r"""
### Curves

Training metrics are means over `log_every` steps: `loss/edit` (NLL of the target on a rephrase after the edit),
`loss/loc` (KL on locality prompts), and the post-edit token accuracies on the rephrase (`edit/acc`) and of locality
(`loc/acc`, agreement with the unedited model). Validation metrics are the book's teacher-forced metrics on the
validation splits; step 0 is the untrained editor (identity network, initial step size).
"""),
code(r"""
train_logs = {name: r.train_log() for name, r in results.items()}
val_logs = {name: r.val_log() for name, r in results.items()}
fig = plotting.plot_training_curves(train_logs)
"""),
code(r"""
fig = plotting.plot_validation_curves(val_logs)
"""),
md(r"""
## A check on held-out test records

Each test record is edited alone, scored and restored. Reliability is the target's token accuracy on the edit
prompt, Generalization on its rephrases, Locality the agreement with the unedited model on the locality prompts; the
*Base* columns are the unedited model on the same (instructed or plain) inputs. The full comparison with hold-out
tasks and unseen instructions is the next chapter's subject.
"""),
code(r"""
cases = []
for name, r in results.items():
    requests = evaluation.task_requests(cfg.tasks, "test", cfg.sample_per_task, seed=cfg.seed,
                                        instructions=r.editor.config.use_instructions, data_dir=cfg.data_dir)
    cases += training.evaluate_editor(r.editor, model, tokenizer, requests, method=name, run=run,
                                      **cfg.score_kwargs())
metrics = ["base/edit/acc", "edit/acc", "base/gen/acc", "gen/acc", "loc/acc"]
summary = evaluation.summarize(cases, by=("method", "task"), metrics=metrics, seed=cfg.seed)
run.write_table("test_summary", summary)
table = summary.pivot_table(index=["method", "task"], columns="metric", values="mean")[metrics] * 100
table.columns = ["Base Rel.", "Reliability", "Base Gen.", "Generalization", "Locality"]
table.round(1)
"""),
code(r"""
display(Markdown("95% bootstrap intervals (percent):"))
evaluation.wide_table(summary.assign(row=summary["method"] + " / " + summary["task"]), index="row")
"""),
md(r"""
## Live edits

Greedy continuations of a few CounterFact test prompts before and after one edit, for both editors (InstructEdit
sees the first seen description; MEND the bare prompt), on the edit prompt and on its first rephrase.
"""),
code(r"""
live_records = data.sample(data.load_task("counterfact", "test", cfg.data_dir), cfg.live_edits, cfg.seed)
training.live_edits(model, tokenizer, {n: r.editor for n, r in results.items()}, live_records)
"""),
md(r"""
## Summary
"""),
code(r"""
for name, r in results.items():
    s = r.summary
    t = table.loc[name]
    display(Markdown(
        f"* **{name}**: stopped by `{s['stop_reason']}` after {s['step']} steps ({s['train_time_s'] / 60:.1f} min of "
        f"training steps); best `{s['metric']}` = {s['best']:.3f} at step {s['best_step']}. On test records: "
        f"Reliability {t['Reliability'].mean():.1f}% (base {t['Base Rel.'].mean():.1f}%), "
        f"Locality {t['Locality'].mean():.1f}% (means over tasks)."))
"""),
md(r"""
* MEND and InstructEdit share every piece of code; the instruction is the only difference between them.
* Edits are functional (weight deltas applied in a context manager and restored bit-exactly), so the same base model
  serves every edit; the editors are small files (`editor.safetensors`) reused by the next chapters.
* Numbers in this chapter come from the profile's settings (see the parameters cell); on the `ci` profile they only
  show that the pipeline runs, not how well the editors learn.
"""),
]
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                  "language_info": {"name": "python"}}
nbf.write(nb, "notebooks/02_editor_training.ipynb")
