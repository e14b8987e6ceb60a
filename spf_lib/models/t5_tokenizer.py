"""A T5 (SentencePiece-style Unigram) tokenizer built locally, for SD3's third text encoder without a model hub.

Same algorithm and special tokens as T5's (``<pad>`` = 0, ``</s>`` = 1 appended, ``<unk>`` = 2, "▁" word-start
pieces), with whole-word pieces for the portrait vocabulary and single characters as the fallback.
"""

from __future__ import annotations

import string

from spf_lib.models.tokenizer import PORTRAIT_WORDS


def build_t5_tokenizer(max_length: int = 256, words: tuple[str, ...] = PORTRAIT_WORDS):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = list(string.ascii_letters + string.digits + string.punctuation)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    pieces += [("▁" + w, -2.0) for w in dict.fromkeys(w.lower() for w in words)]
    pieces += [("▁" + c, -5.0) for c in chars] + [(c, -6.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    out = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)
    out.model_max_length = max_length
    return out
