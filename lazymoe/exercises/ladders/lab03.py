"""Lab 03 (quantization): int8 per row, int4 per group, two weights per byte."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

EXERCISES = [
    Exercise(
        key="lab03.int8",
        title=_("int8, one scale per row", lang="en"),
        check="lab03.check_int8_rows(quantize_int8_rows)",
        hints=(
            _("Each row gets its own ruler: the step size is chosen so that the row's largest weight "
              "(ignoring its sign) lands on 127.", lang="en"),
            _("scale = w.abs().amax(dim=1) / 127 gives one number per row. Divide each row by its scale "
              "(scale[:, None] lines it up with the columns), round, clamp to -127..127, make it int8.", lang="en"),
            "scale = ...  # (rows,)\nq = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)\n"
            "return q, scale",
        ),
        solution="""\
def quantize_int8_rows(w):
    scale = w.abs().amax(dim=1) / 127  # (rows,)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (rows, cols)
    return q, scale
""",
        wrong="""\
def quantize_int8_rows(w):
    scale = w.abs().amax(dim=1)  # forgot / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale
""",
    ),
    Exercise(
        key="lab03.int4",
        title=_("4 bits, one scale per group", lang="en"),
        check="lab03.check_int4_groups(quantize_int4_groups)",
        hints=(
            _("The same as int8, but the ruler is shared by group_size neighbouring weights in a row, "
              "and it has 7 steps each side instead of 127.", lang="en"),
            _("Reshape (rows, cols) into (rows, cols // group_size, group_size): now the last dimension "
              "is one group. Take the scale over it (dim=-1), quantize, then reshape back.", lang="en"),
            "groups = w.reshape(rows, cols // group_size, group_size)\n"
            "scale = groups.abs().amax(dim=-1) / 7\n"
            "q = torch.round(groups / scale[..., None]).clamp(-7, 7)\n"
            "return q.reshape(rows, cols).to(torch.int8), scale",
        ),
        solution="""\
def quantize_int4_groups(w, group_size=32):
    rows, cols = w.shape
    groups = w.reshape(rows, cols // group_size, group_size)
    scale = groups.abs().amax(dim=-1) / 7  # (rows, n_groups)
    q = torch.round(groups / scale[..., None]).clamp(-7, 7)
    return q.reshape(rows, cols).to(torch.int8), scale
""",
    ),
    Exercise(
        key="lab03.pack",
        title=_("two weights per byte", lang="en"),
        check="lab03.check_pack_int4(pack_int4)",
        hints=(
            _("A byte has two halves of 4 bits (nibbles). Each half holds 0..15, so first shift every "
              "q from -8..7 up to 0..15 by adding 8.", lang="en"),
            _("The low half of byte j holds weight j, the high half weight j + 16. Moving a number into "
              "the high half is `<< 4` (times 16); joining two halves is `|`.", lang="en"),
            "u = (q.to(torch.int16) + 8).to(torch.uint8)\nreturn u[:, :16] | (u[:, 16:] << 4)",
        ),
        blanks="""\
def pack_int4(q):
    u = (q.to(torch.int16) + ___).to(torch.uint8)  # -8..7 -> 0..15 (int16 first: no overflow)
    low = u[:, :16]  # weights 0..15 go in the low 4 bits
    high = u[:, ___:]  # weights 16..31 go in the high 4 bits
    return low | (high << ___)  # shift the high half up by 4 bits
""",
        solution="""\
def pack_int4(q):
    u = (q.to(torch.int16) + 8).to(torch.uint8)  # 0..15 (int16 first: int8 + 8 could overflow)
    return u[:, :16] | (u[:, 16:] << 4)
""",
        wrong="""\
def pack_int4(q):
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)  # neighbours, not j and j + 16
""",
    ),
]
