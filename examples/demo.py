"""A small module to try tokenfill on: `make serve` completes a few cursors in it."""

import os


def read_lines(path):
    with open(path) as f:
        return [line.rstrip("\n") for line in f]


def count_words(text):
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


def list_python_files(root):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".py"):
                found.append(os.path.join(dirpath, name))
    return found


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)
