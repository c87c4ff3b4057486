"""The one mapping from Keras names to signature keys.

TF names a signature's inputs after the traced function's parameters, and
renames what Python could not call a parameter (`function_type.sanitize_
arg_name`: every character that is not alphanumeric becomes `_`, and a
name that does not start with a letter gets `arg_` in front); the
placeholder it feeds must then be a valid graph node name (ASCII letters,
digits and `_.-/>`, not starting with `_`), or saving fails. Outputs keep
their dict keys. So a key is made here that every one of those rules leaves
as it is: ASCII letters, digits and `_`, starting with a letter, no Python
keyword. TF then renames nothing, and the warm-up requests, `examples()`
feature names, `verify` and the loaded signatures all read the same key.

The mapping (written down in docs/format.md):

- accents are dropped (`état` -> `etat`), any other character outside
  ASCII becomes `u` and its code point in hex (`年龄` -> `u5e74u9f84`);
- any other ASCII character that is not a letter, digit or `_` becomes `_`
  (`sepal.length` -> `sepal_length`, `a b` -> `a_b`);
- a key that does not start with a letter gets `arg_` in front, as TF does
  (`1x` -> `arg_1x`, `_id` -> `arg__id`), and a Python keyword gets `_`
  after it (`class` -> `class_`).

Two names with one key are refused, naming both: no suffix is ever added,
so no key can silently take another's place.
"""

from __future__ import annotations

import keyword
import unicodedata
from collections.abc import Iterable


def signature_key(name: str) -> str:
    """The signature key of the Keras name `name`.

    Example:

        signature_key("sepal.length")  # "sepal_length"
        signature_key("1x")            # "arg_1x"
    """
    chars = []
    for char in unicodedata.normalize("NFKD", str(name).split(":")[0]):
        if unicodedata.combining(char):
            continue  # An accent, split from its letter by NFKD.
        if char.isascii():
            chars.append(char if char.isalnum() or char == "_" else "_")
        else:
            chars.append(f"u{ord(char):04x}")
    key = "".join(chars)
    if not key[:1].isalpha():
        key = "arg_" + key
    return key + "_" if keyword.iskeyword(key) else key


def signature_keys(names: Iterable[str], what: str) -> list[str]:
    """The keys of `names`, in order.

    Args:
      names: Keras names of inputs or outputs.
      what: "input" or "output", for the error message.

    Raises:
      ValueError: two names have one key (or a name is given twice).
    """
    names = [str(n) for n in names]
    owner: dict[str, str] = {}
    for name in names:
        key = signature_key(name)
        if key in owner:
            raise ValueError(
                f"The model's {what}s {owner[key]!r} and {name!r} would both be "
                f"served as {key!r} (signature keys hold only ASCII letters, "
                f"digits and '_', see docs/format.md). Rename one of them, e.g. "
                f"name='{key}_2' in its keras.Input or layer."
            )
        owner[key] = name
    return [signature_key(n) for n in names]
