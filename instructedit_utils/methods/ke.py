"""KE, the knowledge editor of De Cao et al. (2021), *Editing Factual Knowledge in Language Models* (Sec. 3; Table
3's KE column in InstructEdit): a hypernetwork **conditioned on the edit** that maps the fine-tuning gradient to a
parameter update, trained under a constraint on how much the model's other predictions may change.

For an edited matrix ``W`` (``[out, in]``) with gradient ``∇W = Σ_t δ_t u_tᵀ`` of the edit loss, KE's update is
``ΔW = -α · σ(η) · (α̂ ⊙ ∇W + β̂)`` with rank-one ``α̂ = (out · softmax(a)) gᵀ`` and ``β̂ = softmax(b) dᵀ``, where
``a, b ∈ R^out``, ``g, d ∈ R^in`` and ``η`` come from a conditioner network per matrix reading a condition vector of
the edit, and ``α`` is the learned step size per matrix (shared with MEND's code). Because ``α̂ ⊙ ∇W =
Σ_t (a'⊙δ_t)(g⊙u_t)ᵀ``, the update stays a sum of rank-one terms: it is handed to the rest of the code as
:class:`~instructedit_utils.methods.mend.Factors` with one extra row for ``β̂``, so applying, the low-rank training
hook, saving and the evaluation harness are MEND's. The condition is the edit itself (input and desired output): the
model's frozen input embeddings of the prompt+target tokens, a linear map and a bidirectional LSTM, mean-pooled.

Training goes through the one trainer of :mod:`~instructedit_utils.training` (same mixture, budget, validation,
early stop, checkpoints, resume, Accelerate): only :meth:`KnowledgeEditor.objective` differs. KE minimises the edit
loss subject to ``KL(pre ‖ post) ≤ kl_margin`` on the locality sequences, with a Lagrange multiplier ``λ`` (starting
at ``c_loc``) updated by dual ascent, ``λ ← max(0, λ + lagrange_lr · (KL − kl_margin))``, after every training edit;
``λ`` is a buffer of the editor, so it is saved with checkpoints and a resumed run continues it.

Initialisation: the conditioners' last layers start at zero with biases that make ``α̂ = 1``, ``β̂ = 0``,
``σ(η) = ½``, so the untrained KE is a plain gradient step of size ``ke_edit_lr / 2``.

Deviations from the paper, and why: the condition is encoded from the edited model's own (frozen) token embeddings
instead of a separate BERT-sized encoder (no second model on two CPU cores); the constraint is on the locality KL
(the quantity MEND/InstructEdit are trained with) rather than on a sampled set of other predictions; no weight
normalisation in the conditioners; KE edits the same matrices as MEND (the last three MLPs).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..config.method import MethodConfig
from ..models.targets import EditTarget, Factors, edit_targets
from .mend import MendEditor, _key, build_trained_editor, register_editor
from .registry import EditingMethod, register


class Conditioner(nn.Module):
    """Condition vector → ``(a, g, b, d, η)`` of one edited matrix."""

    def __init__(self, condition_dim: int, hidden: int, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden = nn.Linear(condition_dim, hidden)
        self.out = nn.Linear(hidden, 2 * (in_dim + out_dim) + 1)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[out_dim:out_dim + in_dim] = 1.0  # g = 1: α̂ = 1 at init

    def forward(self, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        o, i = self.out_dim, self.in_dim
        a, g, b, d, eta = self.out(torch.tanh(self.hidden(condition))).split([o, i, o, i, 1])
        return o * a.softmax(-1), g, b.softmax(-1), d, torch.sigmoid(eta)


@register_editor("ke")
class KnowledgeEditor(MendEditor):
    """KE (see the module docstring); persistence, edits and the trainer are :class:`MendEditor`'s."""

    def __init__(self, targets: Sequence[EditTarget], config: MethodConfig, embed_dim: int | None = None):
        if embed_dim is None:
            raise ValueError("KnowledgeEditor needs embed_dim (the model's token embedding width)")
        self.embed_dim = embed_dim
        super().__init__(targets, config)
        h = config.ke_hidden
        self.project = nn.Linear(embed_dim, h)
        self.encoder = nn.LSTM(h, h // 2 if h > 1 else 1, batch_first=True, bidirectional=True)
        self.register_buffer("lagrange", torch.tensor(float(config.c_loc)))

    @classmethod
    def for_model(cls, model: nn.Module, config: MethodConfig, layers: Sequence[int] | None = None
                  ) -> "KnowledgeEditor":
        return cls(edit_targets(model, layers), config, model.get_input_embeddings().embedding_dim)

    def networks(self, groups: Mapping[str, Sequence[EditTarget]]) -> nn.ModuleDict:
        h = self.config.ke_hidden
        width = 2 * (h // 2 if h > 1 else 1)
        return nn.ModuleDict({_key(t.name): Conditioner(width, h, t.in_dim, t.out_dim)
                              for ts in groups.values() for t in ts})

    def network_parameters(self) -> list[nn.Parameter]:
        return [*self.nets.parameters(), *self.project.parameters(), *self.encoder.parameters()]

    def edit_context(self, model: nn.Module, input_ids: Sequence[int]) -> torch.Tensor:
        """The edit's token embeddings ``[T, d]`` (frozen, from the model)."""
        embed = model.get_input_embeddings()
        ids = torch.tensor(list(input_ids), device=embed.weight.device)
        with torch.no_grad():
            return embed(ids).float()

    def condition(self, context: torch.Tensor) -> torch.Tensor:
        out, _ = self.encoder(self.project(context.to(self.project.weight.dtype))[None])
        return out[0].mean(0)

    def transform_all(self, factors: Mapping[str, Factors], context: Any = None) -> dict[str, Factors]:
        if context is None:
            raise ValueError("KE conditions its update on the edit: pass the edit's context (edit_context)")
        c = self.condition(context)
        out = {}
        for t in self.targets:
            f = factors[t.name]
            a, g, b, d, s = self.nets[_key(t.name)](c)
            delta = torch.cat([f.delta * a, b[None]]) * s
            u = torch.cat([f.u * g, d[None]])
            rows = None if f.rows is None else torch.cat([f.rows, f.rows[:1]])
            out[t.name] = Factors(u, delta, rows)
        return out

    def batch_context(self, model: nn.Module, eb) -> Any:
        if len(eb.batch.input_ids) != 1:
            raise NotImplementedError("KE conditions its update on one edit (its prompt and target): it has no batch "
                                      "edit; edit the facts one at a time or in sequence")
        return super().batch_context(model, eb)

    def objective(self, l_edit: torch.Tensor, l_loc: torch.Tensor) -> torch.Tensor:
        """``c_edit·L_edit + λ·(KL − margin)``; in training, ``λ`` then takes one dual-ascent step (kept ≥ 0)."""
        lam = float(self.lagrange)
        if self.training:
            with torch.no_grad():
                self.lagrange.add_(self.config.lagrange_lr * (float(l_loc.detach()) - self.config.kl_margin))
                self.lagrange.clamp_(min=0.0)
        return self.config.c_edit * l_edit + lam * (l_loc - self.config.kl_margin)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "format": "instructedit-ke/1", "init": {"embed_dim": self.embed_dim}}


@register("ke")
def _build_ke(model, tokenizer, **options) -> EditingMethod:
    """A trained KE editor (:mod:`~instructedit_utils.methods.ke`), loaded like MEND's (``editor_dir=`` or ``editor=``)."""
    return build_trained_editor(model, tokenizer, **options)
