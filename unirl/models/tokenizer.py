"""A small byte-level BPE tokenizer for the models the project builds itself (janus-tiny, toy).

Real checkpoints bring their own tokenizer; this one exists so that random-init and toy
models need no download. Byte-level, so any text encodes; trained on a small corpus so
that common words (" yes", " no", colours, numbers) are single tokens and the yes/no judge
can read them from one next-token distribution.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# Janus' own special tokens, so prompts built for real Janus checkpoints work unchanged.
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"

BASE_CORPUS = [
    f"{USER}: a photo of a red circle\n\n{ASSISTANT}:",
    "yes no Yes No yes. no. one two three four five six seven eight nine ten zero 0 1 2 3 4 5 6 7 8 9",
    "red orange yellow green blue purple pink brown black white gray",
    "a photo of an the and left of right of above below is there are there exactly how many what which",
    "colour color position object objects shape shapes image picture where tile tiles frame clip point",
    "circle square triangle star heart cross diamond hexagon person dog cat car bench",
    "Is there a red circle? Are there exactly three stars? Is the square left of the heart?",
]


def build_byte_bpe_tokenizer(corpus: list[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` (deterministic) and wrap it as a Janus tokenizer."""
    corpus = (corpus or []) + BASE_CORPUS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, IMAGE, BOI, EOI, USER, ASSISTANT]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat each line a few times so every word in it clears the trainer's minimum frequency.
    tok.train_from_iterator([line for line in corpus for _ in range(3)], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left",
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )
