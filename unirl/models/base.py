"""The interface every unified-model backend provides (see DESIGN.md, "The model interface")."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Images for understanding: one tensor [N,3,H,W] in [0,1] (one image per sample), or a list of
# N tensors [k,3,H,W] (k images per sample: jigsaw tiles, video clips, marked views).
Images = torch.Tensor | list[torch.Tensor]
# Where a question places its images, one slot per image ("Tile 1: <image>\nTile 2: <image>\n…");
# a question without slots gets its images before the text.
IMAGE_SLOT = "<image>"


@dataclass
class ImageRollout:
    """What `generate_images` returns. N = len(prompts) * num_per_prompt, prompt-major."""

    images: torch.Tensor  # float [N,3,H,W] in [0,1]
    tokens: torch.Tensor  # long [N,T]
    logprobs: torch.Tensor  # float [N,T]: log-prob of each sampled token where it was drawn
    prompts: list[str]  # [N], the prompt of each sample
    sampling: dict[str, Any] = field(default_factory=dict)  # guidance, temperature, seed, ...
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific (e.g. Show-o's unmasking order)


@dataclass
class TextRollout:
    """What `sample_answers` returns: N answers, one per (images, question) sample."""

    texts: list[str]
    tokens: torch.Tensor  # long [N,T]: the sampled ids, the EOS included, padding after it
    mask: torch.Tensor  # bool [N,T]: the sampled tokens (answer and EOS)
    logprobs: torch.Tensor  # float [N,T]: log-prob of each where it was drawn (at the temperature)
    sampling: dict[str, Any] = field(default_factory=dict)


class UnifiedModel(abc.ABC):
    """A model that generates images as discrete tokens and answers questions about images."""

    backend: str
    spec: str  # how it was loaded, recorded with every result
    module: torch.nn.Module  # the trainable network
    device: torch.device
    dtype: torch.dtype

    @abc.abstractmethod
    def generate_images(self, prompts: list[str], num_per_prompt: int = 1, guidance: float = 5.0,
                        temperature: float = 1.0, seed: int = 0) -> ImageRollout: ...

    @abc.abstractmethod
    def image_token_logprobs(self, prompts_per_sample: list[str], tokens: torch.Tensor, guidance: float = 5.0,
                             temperature: float = 1.0, rollout: ImageRollout | None = None) -> torch.Tensor: ...

    @abc.abstractmethod
    def answer(self, images: Images, questions: list[str], max_new_tokens: int = 32) -> list[str]: ...

    @abc.abstractmethod
    def answer_logprobs(self, images: Images, questions: list[str], answers: list[str]) -> torch.Tensor: ...

    def sample_answers(self, images: Images, questions: list[str], temperature: float = 1.0, seed: int = 0,
                       max_new_tokens: int = 32) -> TextRollout:
        """Answers sampled at `temperature` (0: greedy), with their token ids and log-probs: the
        rollouts of GRPO on answers (Visual Jigsaw)."""
        raise NotImplementedError(f"{self.backend}: sampled answers are not available for this backend yet")

    def answer_token_logprobs(self, images: Images, questions: list[str], tokens: torch.Tensor, mask: torch.Tensor,
                              temperature: float = 1.0) -> torch.Tensor:
        """Log-probs [N,T] of given answer tokens (a `TextRollout`'s), teacher-forced; differentiable."""
        raise NotImplementedError(f"{self.backend}: answer-token log-probs are not available for this backend yet")

    @abc.abstractmethod
    def yes_no(self, images: Images, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def yes_no_about(self, images: torch.Tensor, owner: torch.Tensor, questions: list[str]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """p(yes), p(no) [N] for questions that share images, as a judge asks them: question k is
        about images[owner[k]]. A backend that can read each image once for all its questions
        overrides this; here each (image, question) pair is asked on its own row."""
        return self.yes_no(images[owner.to(images.device)], questions)

    @abc.abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        """Write a folder that `load_model(path)` reads back (safetensors weights + configs)."""

    # Whether generate_images / image_token_logprobs take `context_tokens`: an image the new one
    # continues from (SAIL's next-frame planning).
    image_context: bool = False

    # Parameter-name prefixes of `module` that post-training leaves alone (image tokenizer, vision tower).
    frozen_prefixes: tuple[str, ...] = ()

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) pairs that recipes train by default, in a fixed order (optimizer
        state is restored by position)."""
        return [(n, p) for n, p in self.module.named_parameters() if not n.startswith(self.frozen_prefixes)]

    @property
    def num_image_tokens(self) -> int:
        raise NotImplementedError

    @property
    def default_guidance(self) -> float:
        """The guidance a checkpoint is meant to be sampled with (commands use it when --guidance
        is not given)."""
        return 5.0


def yes_no_token_ids(tokenizer: Any, spec: str) -> tuple[list[int], list[int]]:
    """First-token ids of " yes"/" Yes" and " no"/" No" (answers start with a space after the
    assistant tag): `yes_no` reads p(yes), p(no) from them."""
    from unirl.errors import UnirlError

    def first_ids(words: tuple[str, ...]) -> list[int]:
        return sorted({tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in words})

    yes, no = first_ids(("yes", "Yes")), first_ids(("no", "No"))
    if set(yes) & set(no):
        raise UnirlError(f"{spec}: tokenizer does not give 'yes' and 'no' distinct first tokens")
    return yes, no


def resolve_device_dtype(device: str | torch.device | None, dtype: str | torch.dtype | None
                         ) -> tuple[torch.device, torch.dtype]:
    """Defaults: cuda when available; bfloat16 on GPU, float32 on CPU."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    elif isinstance(dtype, torch.dtype):
        dt = dtype
    else:
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}
        if dtype not in names:
            from unirl.errors import UnirlError

            raise UnirlError(f"dtype: expected one of {sorted(names)}, got {dtype!r}")
        dt = names[dtype]
    return dev, dt
