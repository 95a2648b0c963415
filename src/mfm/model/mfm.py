"""The Multimodal Factorization Model (Tsai et al., ICLR 2019) for any set of modalities.

Inference (encoders)::

    Z_y    = W [MFN(X_1 .. X_M)]        multimodal discriminative factor
    Z_a,m  = Enc_m(X_m)                 modality-specific generative factor, m = 1..M

Generation::

    F_y = G_y(Z_y),  F_m = G_m(Z_a,m)
    X^_m = Dec_m([F_y, F_m])            every modality rebuilt from its factors
    Y^_k = D_k(F_y)                     every target k from the discriminative factor alone

``model.kind`` turns the same class into a baseline or an ablation (the MFN alone, early
or late fusion, the MFM without Z_y, without Z_a,m, or without its generative part): it
chooses the Z_y encoder and switches off the parts the kind lacks; see
:mod:`mfm.model.baselines`.

Inputs are right-padded (see :mod:`mfm.data.batch`) with per-sample lengths per
modality; the model never reads a padded step. The objective lives in
:mod:`mfm.losses.objective`.

Missing modalities: surrogate inference for any subset
--------------------------------------------------------

A modality is *absent* for a sample when its length is 0 (the batch's presence mask is
``lengths > 0``). Its tensor is zeroed before anything reads it, so whatever it holds
cannot change an output. A sample missing any modality is encoded by the *surrogate
path*, one network for every subset:

* a surrogate MFN (same shape as the main one, its own weights) reads the present
  modalities, the absent ones masked at every step (their cells stay at zero, the memory
  fuses the others), giving a final state ``u``; ``Z_y = W_s u``;
* each absent modality's ``Z_a,m`` is ``S_m(u)``, a small MLP; present modalities keep
  their own encoders' ``Z_a,m``;
* ``X_m`` is rebuilt by its decoder from ``[G_y(Z_y), G_m(S_m(u))]``, and ``Y`` predicted
  from ``G_y(Z_y)`` as usual.

Training (:class:`mfm.engine.MFMModule`): with per-modality dropout probabilities
(``train.modality_dropout``) each batch is encoded twice: once with the modalities the data
has (the full pass, which gives the usual objective), once with a random subset of the
present modalities removed per sample (at least one kept). ``missing_loss`` compares the
second pass with the first: the mean squared error between the surrogate ``Z_y`` and the
full ``Z_y`` over samples that lost a modality, plus, for each removed modality, between
its surrogate ``Z_a,m`` and the ``Z_a,m`` its own encoder gave in the full pass. The
full-pass latents are the targets and are detached by default
(``loss.detach_missing_targets``), so the surrogates learn to imitate the encoders rather
than the encoders to imitate the surrogates; and because the surrogate path has its own
MFN, training it never disturbs the full path (a shared MFN chasing its own detached
output was measured to diverge). The second pass also rebuilds each removed
modality from its surrogate factors (``recon_missing``, weighted like the modality's own
reconstruction), which trains the decoders for generation without the modality.
Both terms are weighted by ``loss.lambda_missing``. A modality absent in the data itself
contributes no reconstruction term and no missing-loss target.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mfm.config import ModelConfig
from mfm.data.batch import step_mask
from mfm.model.baselines import EarlyFusionEncoder, LateFusionEncoder, parts_of
from mfm.model.decoders import SequenceDecoder, masked_mse, squared_errors
from mfm.model.encoders import MLP, SequenceEncoder
from mfm.model.mfn import MemoryFusionNetwork, aligned_view
from mfm.model.recurrent import Packing, gate_major_order, lstm_module_weights

EXPORT_FORMAT = "mfm-export-1"


@dataclass
class MFMOutput:
    """Everything one forward pass produces.

    Attributes:
        predictions: target name -> ``(B,)`` regression values or ``(B, C)`` class logits.
        reconstructions: modality -> ``(B, T_m, d_m)`` rebuilt sequence (padded steps
            hold values too; losses ignore them).
        z_y: ``(B, zy)`` multimodal discriminative factor (``(B, 0)`` for ``mfm-no-zy``).
        z: modality -> ``(B, z_m)`` modality-specific factor (empty for kinds without).
        f_y: ``(B, fy)``.
        f: modality -> ``(B, f_m)``.
        mmd: whether the objective puts the MMD prior on the factors (False for the
            ``model.kind`` that have no MMD; see :mod:`mfm.model.baselines`).
        reconstruction_errors: modality -> 0-d mean squared reconstruction error over
            the scored steps, when the forward pass was asked for errors instead of
            reconstructions (``MFM.forward(..., errors=...)``; ``reconstructions`` is
            then empty); None otherwise.
    """

    predictions: dict[str, Tensor]
    reconstructions: dict[str, Tensor]
    z_y: Tensor
    z: dict[str, Tensor]
    f_y: Tensor
    f: dict[str, Tensor]
    mmd: bool = True
    reconstruction_errors: dict[str, Tensor] | None = None

    @property
    def prediction(self) -> Tensor:
        """The first target's prediction (the only one for single-target data)."""
        return next(iter(self.predictions.values()))


@dataclass
class _Packed:
    """The packed rows one joint encoding ran on (reused to score the reconstructions).

    Attributes:
        plan: the packing (each sample's rows end at its last step of any modality).
        rows: modality -> ``(N, d_m)`` the packed input rows as given (not zeroed).
        valid: ``(N, M)`` bool, True where modality ``m``'s step is real; None when every
            packed row is real for every modality.
    """

    plan: Packing
    rows: dict[str, Tensor]
    valid: Tensor | None


def check_modality_names(names: list[str]) -> None:
    """Refuse names that cannot key a module (empty or containing a dot)."""
    if not names:
        raise ValueError("an MFM needs at least one modality")
    for name in names:
        if not name or "." in name:
            raise ValueError(f"invalid modality name {name!r}: non-empty, without '.'")


class MFM(nn.Module):
    """Multimodal Factorization Model.

    Args:
        config: architecture (:class:`mfm.config.ModelConfig`).
        input_sizes: modality name -> features per step ``d_m``; the order fixes the
            modality order everywhere (MFN state layout, logging).
    """

    def __init__(self, config: ModelConfig, input_sizes: Mapping[str, int]) -> None:
        super().__init__()
        self.targets = config.target_specs()
        if any(t.kind == "auto" for t in self.targets.values()):
            raise ValueError(
                "a target's kind is 'auto': resolve it from the data first "
                "(mfm.config.resolve_output)"
            )
        self.config = config
        self.names = list(input_sizes)
        check_modality_names(self.names)
        self.input_sizes = {k: int(v) for k, v in input_sizes.items()}
        mods = {name: config.modality(name) for name in self.names}
        # model.kind chooses the Z_y encoder and which optional parts exist
        # (mfm.model.baselines); modules are created in the same order for every kind.
        self.parts = parts_of(config.kind)
        parts = self.parts
        factors = mods if parts.modality_factors else {}
        self.encoders = nn.ModuleDict(
            {n: SequenceEncoder(self.input_sizes[n], mods[n].encoder_hidden or mods[n].hidden,
                                mods[n].z, fast=config.fast_recurrence,
                                native=config.native_kernels) for n in factors}
        )
        self.mfn: MemoryFusionNetwork | None = None
        self.to_zy: nn.Linear | None = None
        self.fusion: EarlyFusionEncoder | LateFusionEncoder | None = None
        sizes = [self.input_sizes[n] for n in self.names]
        hiddens = [mods[n].hidden for n in self.names]
        if parts.zy_encoder == "mfn":
            self.mfn = self._make_mfn()
            self.to_zy = nn.Linear(self.mfn.output_size, config.zy)
        elif parts.zy_encoder == "early":
            self.fusion = EarlyFusionEncoder(sizes, sum(hiddens), config.zy, config.alignment,
                                             config.mfn_steps)
        elif parts.zy_encoder == "late":
            self.fusion = LateFusionEncoder(sizes, hiddens, config.zy)
        # Surrogate inference for samples with absent modalities: a second MFN of the same
        # shape fuses the present modalities; Z_y and each absent Z_a,m come from its state.
        self.surrogate_mfn: MemoryFusionNetwork | None = None
        self.surrogate_to_zy: nn.Linear | None = None
        if parts.surrogate:
            self.surrogate_mfn = self._make_mfn()
            if parts.zy_encoder is not None:
                self.surrogate_to_zy = nn.Linear(self.surrogate_mfn.output_size, config.zy)
        state_size = self.surrogate_mfn.output_size if self.surrogate_mfn is not None else 0
        self.surrogates = nn.ModuleDict(
            {n: MLP(state_size, config.surrogate_hidden, m.z) for n, m in factors.items()
             if parts.surrogate}
        )
        # Without Z_y (mfm-no-zy), G_y reads the concatenated F_m's in its place.
        g_y_input = config.zy if parts.zy_encoder is not None else sum(m.f for m in mods.values())
        self.g_y = MLP(g_y_input, config.fy, config.fy, config.fy_dropout)
        self.g = nn.ModuleDict({n: MLP(m.z, m.f, m.f, m.dropout) for n, m in factors.items()})
        code_sizes = {"joint": lambda m: config.fy + m.f, "own": lambda m: m.f,
                      "shared": lambda m: config.fy}
        self.decoders = nn.ModuleDict(
            {
                n: SequenceDecoder(code_sizes[parts.decoder_input](m),
                                   m.decoder_hidden or m.hidden, self.input_sizes[n])
                for n, m in mods.items() if parts.decoder_input is not None
            }
        )
        out = config.output
        # One head per named target, each on F_y.
        self.heads = nn.ModuleDict(
            {name: MLP(config.fy, out.hidden or config.fy, t.size, out.dropout)
             for name, t in self.targets.items()}
        )
        # The joint scan of every decoder keeps its gate layout on the model's device.
        self.register_buffer("decoder_order", gate_major_order(
            [d.lstm.hidden_size for d in self.decoders.values()]), persistent=False)

    def _make_mfn(self) -> MemoryFusionNetwork:
        """An MFN over this model's modalities, sized by its configuration."""
        config = self.config
        return MemoryFusionNetwork(
            input_sizes=[self.input_sizes[n] for n in self.names],
            hidden_sizes=[config.modality(n).hidden for n in self.names],
            memory=config.memory,
            attention_hidden=config.attention_hidden,
            attention_dropout=config.attention_dropout,
            gate_hidden=config.gate_hidden,
            gate_dropout=config.gate_dropout,
            cell=config.cell,
            fast=config.fast_recurrence,
            native=config.native_kernels,
        )

    def _lengths(self, inputs: Mapping[str, Tensor],
                 lengths: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        result = {}
        for name in self.names:
            x = inputs[name]
            n = None if lengths is None else lengths.get(name)
            if n is None:
                n = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
            result[name] = n
        return result

    def check_inputs(self, inputs: Mapping[str, Tensor]) -> None:
        """Raise ValueError naming the modality when an input is missing or misshapen."""
        for name in self.names:
            if name not in inputs:
                raise ValueError(
                    f"missing modality {name!r}; the model expects {self.names}, got "
                    f"{list(inputs)}"
                )
            x = inputs[name]
            if x.dim() != 3 or x.shape[2] != self.input_sizes[name]:
                raise ValueError(
                    f"modality {name!r}: expected a (batch, steps, {self.input_sizes[name]}) "
                    f"tensor, got shape {tuple(x.shape)}"
                )

    def encode(
        self, inputs: Mapping[str, Tensor], lengths: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Infer the factors.

        A modality is absent for a sample when its length is 0: its features are never
        read, ``Z_y`` comes from the MFN over the present modalities, and its ``Z_a,m``
        is the surrogate inferred from them (see :mod:`mfm.model.mfm`).

        Args:
            inputs: modality -> ``(B, T_m, d_m)`` right-padded features.
            lengths: modality -> ``(B,)`` valid lengths; omitted means full length.

        Returns:
            ``Z_y`` of shape ``(B, zy)`` and modality -> ``Z_a,m`` of shape ``(B, z_m)``;
            for ``model.kind`` without them, ``Z_y`` is ``(B, 0)`` and the dict is empty.
        """
        z_y, z, _ = self._encode(inputs, lengths)
        return z_y, z

    def _joint_ready(self, inputs: Mapping[str, Tensor]) -> bool:
        """Whether :meth:`_encode_joint` applies: the fast recurrences, an MFN of ``lstm``
        cells over aligned modalities (one padded length), and a non-empty batch."""
        mfn = self.mfn
        if not self.config.fast_recurrence or mfn is None or mfn.memory_proj is not None \
                or not mfn.fast:
            return False
        shapes = {tuple(inputs[n].shape[:2]) for n in self.names}
        if len(shapes) != 1 or self.config.alignment == "resample":
            return False
        batch, steps = shapes.pop()
        return batch > 0 and steps > 0

    def _encode(self, inputs: Mapping[str, Tensor], lengths: Mapping[str, Tensor] | None
                ) -> tuple[Tensor, dict[str, Tensor], _Packed | None]:
        """:meth:`encode`, plus the packed rows when the joint scan ran."""
        self.check_inputs(inputs)
        lengths = self._lengths(inputs, lengths)
        if self._joint_ready(inputs):
            return self._encode_joint(inputs, lengths)
        # Padded steps and absent modalities (length 0) are zeroed before anything reads
        # them, so garbage there (even NaN) cannot reach an output or a gradient.
        clean = {
            n: torch.where(step_mask(lengths[n], inputs[n].shape[1]).unsqueeze(-1),
                           inputs[n], torch.zeros((), dtype=inputs[n].dtype,
                                                  device=inputs[n].device))
            for n in self.names
        }
        ordered = [clean[n] for n in self.names]
        ordered_lengths = [lengths[n] for n in self.names]
        views: list[Tensor] = []
        mask = None
        if self.mfn is not None or self.surrogate_mfn is not None:
            views, mask = aligned_view(ordered, ordered_lengths, self.config.alignment,
                                       self.config.mfn_steps)
        if self.mfn is not None and self.to_zy is not None:
            z_y = self.to_zy(self.mfn(views, mask))  # (B, zy)
        elif self.fusion is not None:
            z_y = self.fusion(ordered, ordered_lengths)  # (B, zy): ef-lstm, lf
        else:
            z_y = ordered[0].new_zeros(ordered[0].shape[0], 0)  # mfm-no-zy: no Z_y
        present = {n: (lengths[n] > 0).unsqueeze(1) for n in self.names}
        state = None
        if self.surrogate_mfn is not None:
            incomplete = ~torch.stack([present[n].squeeze(1) for n in self.names], 1).all(1)
            if bool(incomplete.any()):
                # The surrogate MFN fuses the present modalities of incomplete samples.
                state = self.surrogate_mfn(views, mask)  # (B, H + memory)
                if self.surrogate_to_zy is not None:
                    z_y = torch.where(incomplete.unsqueeze(1), self.surrogate_to_zy(state), z_y)
        z = {}
        for n in self.encoders:
            own = self.encoders[n](clean[n], lengths[n])
            z[n] = own if state is None else torch.where(present[n], own,
                                                          self.surrogates[n](state))
        return z_y, z, None

    def _encode_joint(self, inputs: Mapping[str, Tensor], lengths: dict[str, Tensor]
                      ) -> tuple[Tensor, dict[str, Tensor], _Packed]:
        """The fast encoding of aligned modalities: one scan for every cell.

        The MFN's per-modality cells and the private encoders' LSTMs read the same steps,
        so they run as the cells of one :meth:`MemoryFusionNetwork.scan` (the encoders
        ride along: same packed rows, their state carried where their modality has no
        step). Inputs are packed once (only steps up to each sample's last real one), and
        the rows that are not real for a modality are zeroed there, so nothing outside a
        sample's valid steps is ever read. The same numbers as the reference encoding.
        """
        names = self.names
        mfn = self.mfn
        assert mfn is not None and self.to_zy is not None
        first = inputs[names[0]]
        steps = int(first.shape[1])
        bounded = torch.stack([lengths[n].clamp(min=0, max=steps) for n in names], dim=1)
        plan = Packing.build(bounded.amax(dim=1), steps)
        sample = plan.order.index_select(0, plan.position)  # (N,) the sample of each row
        valid = plan.time.unsqueeze(1) < bounded.index_select(0, sample)  # (N, M)
        masked = not plan.packed or not bool(valid.all())
        rows = {n: plan.pack(inputs[n]) for n in names}
        zero = torch.zeros((), dtype=first.dtype, device=first.device)
        clean = [torch.where(valid[:, m:m + 1], rows[n], zero) if masked else rows[n]
                 for m, n in enumerate(names)]
        riders = []
        for m, n in enumerate(names):
            if n in self.encoders:
                w_ih, bias, w_hh = lstm_module_weights(self.encoders[n].lstm)
                riders.append((F.linear(clean[m], w_ih, bias), w_hh, m))
        state, finals = mfn.scan(plan, clean, valid, riders)
        z_y = self.to_zy(plan.unsort(state))  # (B, zy)
        encoded = [n for n in names if n in self.encoders]
        z = {n: self.encoders[n].proj(plan.unsort(h)) for n, h in zip(encoded, finals,
                                                                     strict=True)}
        if self.surrogate_mfn is not None:
            present = bounded > 0  # (B, M)
            incomplete = ~present.all(dim=1)
            if bool(incomplete.any()):
                sorted_state, _ = self.surrogate_mfn.scan(plan, clean, valid)
                surrogate = plan.unsort(sorted_state)  # (B, H + memory)
                if self.surrogate_to_zy is not None:
                    z_y = torch.where(incomplete.unsqueeze(1), self.surrogate_to_zy(surrogate),
                                      z_y)
                for m, n in enumerate(names):
                    if n in z:
                        z[n] = torch.where(present[:, m:m + 1], z[n],
                                           self.surrogates[n](surrogate))
        return z_y, z, _Packed(plan, rows, valid if masked else None)

    def decode(self, z_y: Tensor, z: Mapping[str, Tensor],
               steps: Mapping[str, int]) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor],
                                                  Tensor]:
        """Generate from factors.

        Args:
            z_y: ``(B, zy)``.
            z: modality -> ``(B, z_m)``.
            steps: modality -> number of steps ``T_m`` to generate.

        Returns:
            ``(predictions, reconstructions, f, f_y)`` with the shapes of
            :class:`MFMOutput`.
        """
        f_y, f = self._generative_factors(z_y, z)
        recon = {n: self.decoders[n](self._decoder_code(f_y, f, n), steps[n])
                 for n in self.decoders}
        return self.predict_from(f_y), recon, f, f_y

    def _generative_factors(self, z_y: Tensor, z: Mapping[str, Tensor]
                            ) -> tuple[Tensor, dict[str, Tensor]]:
        """``F_y`` ``(B, fy)`` and modality -> ``F_m`` ``(B, f_m)``."""
        f = {n: self.g[n](z[n]) for n in self.g}
        if self.parts.zy_encoder is not None:
            return self.g_y(z_y), f
        return self.g_y(torch.cat([f[n] for n in self.names], dim=1)), f  # mfm-no-zy

    def reconstruction_errors(
        self, f_y: Tensor, f: Mapping[str, Tensor], inputs: Mapping[str, Tensor],
        scored: Mapping[str, Tensor], packed: _Packed | None = None,
    ) -> dict[str, Tensor]:
        """Each decoder's mean squared error over the scored steps, without building the
        reconstructions.

        The number is :func:`mfm.model.decoders.masked_mse` of the full reconstruction
        (what the reference path computes, and what it falls back to when
        ``model.fast_recurrence`` is off); the fast path runs every decoder in one scan
        that stops at each sample's last scored step
        (:func:`mfm.model.decoders.squared_errors`).

        Args:
            f_y: ``(B, fy)``.
            f: modality -> ``(B, f_m)``.
            inputs: modality -> ``(B, T_m, d_m)`` the targets.
            scored: modality -> ``(B,)``: the first ``scored[m][b]`` steps of sample ``b``
                are scored; modalities left out get no error.
            packed: the joint encoding's rows, reused when ``scored`` are the lengths it
                encoded (then every scored row is one of its rows).

        Returns:
            modality -> 0-d mean squared error (0 when no step is scored).
        """
        names = [n for n in self.decoders if n in scored]
        codes = {n: self._decoder_code(f_y, f, n) for n in names}
        if not names:
            return {}
        if not self.config.fast_recurrence:
            return {n: masked_mse(self.decoders[n](codes[n], int(inputs[n].shape[1])),
                                  inputs[n], scored[n]) for n in names}
        first = inputs[names[0]]
        steps = max(int(inputs[n].shape[1]) for n in names)
        bounded = torch.stack([scored[n].clamp(min=0, max=int(inputs[n].shape[1]))
                               for n in names], dim=1)  # (B, K)
        if packed is not None and names == self.names:
            plan, valid, targets = packed.plan, packed.valid, packed.rows
        else:
            plan = Packing.build(bounded.amax(dim=1), steps)
            sample = plan.order.index_select(0, plan.position)  # (N,)
            valid = plan.time.unsqueeze(1) < bounded.index_select(0, sample)  # (N, K)
            if plan.packed and bool(valid.all()):
                valid = None
            targets = {}
            for n in names:
                x = inputs[n]
                length = int(x.shape[1])
                if length == steps:
                    targets[n] = plan.pack(x)
                else:  # rows past this modality's padded length are never scored
                    index = sample * length + plan.time.clamp(max=length - 1)
                    targets[n] = x.reshape(-1, x.shape[2]).index_select(0, index)
        perm = self.decoder_order if names == list(self.decoders) else None
        sums = squared_errors({n: self.decoders[n] for n in names}, codes, targets, plan, valid,
                              perm, native=self.config.native_kernels)
        counts = bounded.sum(dim=0).to(first.dtype)  # (K,) scored steps per modality
        return {n: sums[n] / (counts[k] * inputs[n].shape[2]).clamp(min=1.0)
                for k, n in enumerate(names)}

    def generative_term_names(self) -> list[str]:
        """The reconstruction and MMD terms the objective computes for this model, in its
        order: ``recon_<m>`` per decoder, ``mmd_zy``, ``mmd_za_<m>`` (only existing parts,
        none of the MMD terms for kinds without MMD)."""
        terms = [f"recon_{n}" for n in self.decoders]
        if self.parts.mmd:
            terms += ["mmd_zy"] if self.parts.zy_encoder is not None else []
            terms += [f"mmd_za_{n}" for n in self.encoders]
        return terms

    def _decoder_code(self, f_y: Tensor, f: Mapping[str, Tensor], name: str) -> Tensor:
        """What modality ``name``'s decoder reads: ``[F_y, F_m]`` (``mfm``), ``F_m``
        (``mfm-no-zy``) or ``F_y`` (``mfm-zy-only``); ``(B, code)``."""
        if self.parts.decoder_input == "own":
            return f[name]
        if self.parts.decoder_input == "shared":
            return f_y
        return torch.cat([f_y, f[name]], dim=1)

    def predict_from(self, f_y: Tensor) -> dict[str, Tensor]:
        """Every target's prediction from ``(B, fy)`` F_y: ``(B,)`` values or ``(B, C)``
        logits."""
        predictions = {}
        for name, head in self.heads.items():
            value = head(f_y)
            predictions[name] = value.squeeze(-1) if self.targets[name].kind == "regression" \
                else value
        return predictions

    def forward(
        self, inputs: Mapping[str, Tensor], lengths: Mapping[str, Tensor] | None = None,
        *, errors: bool | Mapping[str, Tensor] = False,
    ) -> MFMOutput:
        """Encode, generate and predict.

        Args:
            inputs: modality -> ``(B, T_m, d_m)`` right-padded features.
            lengths: modality -> ``(B,)`` valid lengths; omitted means full length.
            errors: instead of the reconstructions, compute each modality's mean squared
                reconstruction error (``MFMOutput.reconstruction_errors``; the
                objective's ``recon_m``) over its valid steps (True), or over the first
                ``errors[m][b]`` steps of sample ``b`` for the modalities in the mapping
                (e.g. only the removed ones of a missing-modality pass), against
                ``inputs``. What training needs: no ``(B, T, d)`` tensor is built and the
                decoders stop at each sample's last scored step
                (:meth:`reconstruction_errors`).
        """
        if errors is False:
            z_y, z = self.encode(inputs, lengths)
            steps = {n: int(inputs[n].shape[1]) for n in self.names}
            predictions, recon, f, f_y = self.decode(z_y, z, steps)
            return MFMOutput(predictions=predictions, reconstructions=recon, z_y=z_y, z=z,
                             f_y=f_y, f=f, mmd=self.parts.mmd)
        z_y, z, packed = self._encode(inputs, lengths)
        f_y, f = self._generative_factors(z_y, z)
        if errors is True:
            scored = self._lengths(inputs, lengths)
        else:
            scored = dict(errors)
            packed = None
        return MFMOutput(
            predictions=self.predict_from(f_y), reconstructions={}, z_y=z_y, z=z, f_y=f_y,
            f=f, mmd=self.parts.mmd,
            reconstruction_errors=self.reconstruction_errors(f_y, f, inputs, scored, packed))

    def predict(
        self, inputs: Mapping[str, Tensor], lengths: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Only the predictions (``forward(...).predictions``), without running the
        decoders: what ``mfm predict`` needs.

        Args:
            inputs: modality -> ``(B, T_m, d_m)`` right-padded features.
            lengths: modality -> ``(B,)`` valid lengths; omitted means full length.
        """
        z_y, z = self.encode(inputs, lengths)
        if self.parts.zy_encoder is not None:
            f_y = self.g_y(z_y)
        else:  # mfm-no-zy: F_y = G_y([F_1 .. F_M])
            f_y = self.g_y(torch.cat([self.g[n](z[n]) for n in self.names], dim=1))
        return self.predict_from(f_y)

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        run_config: dict[str, Any] | None = None,
        normalization: dict[str, dict[str, list[float]]] | None = None,
    ) -> Path:
        """Write the model as ``model.safetensors`` + ``config.yaml`` + ``model.json``.

        No pickle is involved: weights are safetensors, the rest YAML and JSON.

        Args:
            directory: created if needed.
            run_config: the whole run configuration (``MFMConfig.to_dict()``) to keep with
                the model; by default only its ``model`` section is written.
            normalization: the data's normalisation statistics, written to
                ``normalization.json`` so that inference normalises inputs the same way.

        Returns:
            The directory.
        """
        import dataclasses

        import yaml
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "mfm"})
        config = run_config or {"model": dataclasses.asdict(self.config)}
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (out / "model.json").write_text(json.dumps(
            {"format": EXPORT_FORMAT, "input_sizes": self.input_sizes}, indent=2) + "\n")
        if normalization is not None:
            (out / "normalization.json").write_text(json.dumps(normalization) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MFM:
        """Rebuild a model written by :meth:`save_pretrained` (weights loaded exactly).

        Raises:
            ValueError: a file is missing or does not describe an mfm model.
        """
        import yaml
        from safetensors.torch import load_file

        from mfm.config import MFMConfig

        folder = Path(directory)
        for name in ("model.safetensors", "config.yaml", "model.json"):
            if not (folder / name).is_file():
                raise ValueError(f"{folder}: missing {name} (expected a folder written by "
                                 "`mfm export` or MFM.save_pretrained)")
        meta = json.loads((folder / "model.json").read_text())
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{folder / 'model.json'}: format: expected {EXPORT_FORMAT!r}, "
                             f"found {meta.get('format')!r}")
        config = MFMConfig.from_dict(yaml.safe_load((folder / "config.yaml").read_text()),
                                     source=str(folder / "config.yaml"))
        model = cls(config.model, meta["input_sizes"])
        try:
            state = load_file(str(folder / "model.safetensors"))
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - any failure means unusable weights
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{folder / 'model.safetensors'}: unusable weights ({first[:200]})"
                             ) from exc
        return model
