"""Units of published datasets and their factors to pygfm's eV, Å, eV/Å, eV/Å³.

Constants are CODATA 2018 (as ASE's ``ase.units`` uses): 1 hartree =
27.211386245988 eV, 1 bohr = 0.529177210903 Å, 1 eV = 96.48533212 kJ/mol,
1 kcal = 4.184 kJ, 1 eV/Å³ = 160.21766208 GPa.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENERGY", "LENGTH", "STRESS", "Units", "parse_units"]

EV_PER_KJ_MOL = 1.0 / 96.48533212
ENERGY = {"eV": 1.0, "meV": 1e-3, "hartree": 27.211386245988, "Ha": 27.211386245988,
          "Ry": 13.605693122994, "kcal/mol": 4.184 * EV_PER_KJ_MOL, "kJ/mol": EV_PER_KJ_MOL}
LENGTH = {"Å": 1.0, "A": 1.0, "angstrom": 1.0, "bohr": 0.529177210903, "nm": 10.0}
STRESS = {"eV/Å^3": 1.0, "eV/A^3": 1.0, "GPa": 1.0 / 160.21766208,
          "kbar": 1.0 / 1602.1766208, "kBar": 1.0 / 1602.1766208}

_ALIASES = {"ev": "eV", "mev": "meV", "hartree": "hartree", "ha": "hartree", "eh": "hartree",
            "ry": "Ry", "rydberg": "Ry", "kcal/mol": "kcal/mol", "kj/mol": "kJ/mol",
            "å": "Å", "a": "Å", "ang": "Å", "angstrom": "Å", "bohr": "bohr", "a0": "bohr",
            "nm": "nm", "gpa": "GPa", "kbar": "kbar", "ev/å^3": "eV/Å^3", "ev/a^3": "eV/Å^3",
            "ev/ang^3": "eV/Å^3"}


def _canonical(text: str, table: dict, what: str) -> str:
    name = _ALIASES.get(text.strip().lower(), text.strip())
    if name not in table:
        raise ValueError(f"unknown {what} unit {text!r}; known: {', '.join(sorted(set(table)))}")
    return name


@dataclass(frozen=True)
class Units:
    """The units labels are stored in. Forces are energy/length (a gradient the
    same with the opposite sign) unless ``forces_length`` says otherwise (ANI
    files store hartree/Å with positions in Å, SPICE hartree/bohr with bohr)."""
    energy: str = "eV"
    length: str = "Å"
    forces_length: str | None = None
    stress: str = "eV/Å^3"

    def __post_init__(self):
        object.__setattr__(self, "energy", _canonical(self.energy, ENERGY, "energy"))
        object.__setattr__(self, "length", _canonical(self.length, LENGTH, "length"))
        if self.forces_length is not None:
            object.__setattr__(self, "forces_length",
                               _canonical(self.forces_length, LENGTH, "length"))
        object.__setattr__(self, "stress", _canonical(self.stress, STRESS, "stress"))

    @property
    def energy_factor(self) -> float:
        """Multiply an energy by this for eV."""
        return ENERGY[self.energy]

    @property
    def length_factor(self) -> float:
        """Multiply a position (or cell) by this for Å."""
        return LENGTH[self.length]

    @property
    def forces_factor(self) -> float:
        """Multiply a force (energy/length) by this for eV/Å."""
        return ENERGY[self.energy] / LENGTH[self.forces_length or self.length]

    @property
    def stress_factor(self) -> float:
        """Multiply a stress by this for eV/Å³ (the sign is the reader's business)."""
        return STRESS[self.stress]


def parse_units(text: str | None, base: Units | None = None) -> Units | None:
    """``--units energy=hartree,length=bohr,forces_length=Å,stress=kbar`` over
    ``base`` (default eV, Å); None for None. Errors name the key."""
    if text is None:
        return base
    values = {} if base is None else {"energy": base.energy, "length": base.length,
                                      "forces_length": base.forces_length,
                                      "stress": base.stress}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("energy", "length", "forces_length", "stress"):
            raise ValueError(f"--units: {item!r} is not KEY=UNIT with KEY one of energy, "
                             "length, forces_length, stress")
        values[key] = value.strip()
    return Units(**values)
