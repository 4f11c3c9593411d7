"""The data layer, the lowest one: training and retrieval both read datasets through it (record types, the
loaders, the JSON-lines reader/writer, the word splitter) and the synthetic person world lives here.
It imports nothing of `finetune` outside this package, nor `retrieval` or `cli`."""

from finetune.data.jsonl import append_jsonl, read_jsonl, write_jsonl
from finetune.data.loaders import load_split, load_triplets, load_vqa
from finetune.data.records import PersonImage, Triplet, VqaPair
from finetune.data.text import words

__all__ = ["PersonImage", "Triplet", "VqaPair", "append_jsonl", "load_split", "load_triplets", "load_vqa", "read_jsonl",
           "words", "write_jsonl"]
