"""Atomic read-modify-write instructions executed, from a callgrind dump made with
`--dump-instr=yes`: every executed instruction address whose disassembly (objdump) is
`lock`-prefixed or an `xchg` with memory (locked without the prefix), summed over the objects
the process ran (the binary, libc). Callgrind counts such an instruction as one, like any other,
but it is a full barrier on x86 and can cost tens of cycles; `callgrind_requests.py --atomics`
reports it per request beside the instruction count, for every target and reference proxy.
"""

import re
import subprocess
from collections import Counter

_POSITION = re.compile(r"^(?:0x[0-9a-fA-F]+|[+-]\S+|\*|\d+)$")
_NAMED = re.compile(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$")
_INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\s+(.*)$")


def _position(token, previous):
    if token == "*":
        return previous
    if token[0] in "+-":
        return previous + int(token, 0)
    return int(token, 0)


def executed_addresses(dump_path):
    """(object path, instruction address) -> times executed (self cost, `Ir`), and the
    function name of each address."""
    objects, functions = {}, {}
    counts, function_of = Counter(), {}
    current_object = current_function = None
    address = 0
    after_calls = False
    with open(dump_path) as dump:
        for line in dump:
            line = line.rstrip("\n")
            named = _NAMED.match(line)
            if named:
                called, kind, index, name = named.groups()
                table = objects if kind == "ob" else functions
                if name:
                    table[index] = name
                if not called:
                    if kind == "ob":
                        current_object = index
                    else:
                        current_function = index
                continue
            if line.startswith("calls="):
                after_calls = True
                continue
            parts = line.split()
            if not parts or not _POSITION.match(parts[0]):
                continue
            address = _position(parts[0], address)
            if after_calls:  # the call's inclusive cost, not this address's own
                after_calls = False
                continue
            if len(parts) > 2:
                key = (objects.get(current_object), address)
                counts[key] += int(parts[2])
                function_of[key] = functions.get(current_function, "?")
    return counts, function_of


def atomic_sites(object_path):
    """Addresses of the locked read-modify-write instructions in an object file."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", object_path],
                             capture_output=True, text=True, check=True).stdout
    sites = set()
    for line in listing.splitlines():
        instruction = _INSTRUCTION.match(line)
        if not instruction:
            continue
        text = instruction.group(2)
        if text.startswith("lock") or (text.startswith("xchg") and "(" in text):
            sites.add(int(instruction.group(1), 16))
    return sites


def atomics_executed(dump_path):
    """Total atomic instructions executed, and the count per function. Addresses in the dump are
    the objects' own (valgrind reports position-independent objects at their link addresses)."""
    counts, function_of = executed_addresses(dump_path)
    by_function = Counter()
    for object_path in {o for o, _ in counts if o}:
        try:
            sites = atomic_sites(object_path)
        except (OSError, subprocess.CalledProcessError):
            continue
        for (obj, address), executed in counts.items():
            if obj == object_path and address in sites:
                by_function[function_of[(obj, address)]] += executed
    return sum(by_function.values()), by_function
