"""The column specifications of the census files (UCI Census-Income KDD and Adult): column
names in file order, which are continuous, which are never inputs, which columns each task is
derived from, and how many distinct values each nominal column takes in the full published
training file (from the UCI ``.names`` files: the one-hot width known without the data).
Used by ``datasets/census.py``; see its docstring for the tasks and the encoding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

TaskName = Literal["age", "education", "never_married", "income"]
EDUCATION_PREFIXES = ("Bachelors", "Some", "Masters", "Asso", "Doctorate", "Prof")


def _age_bracket(value: str) -> bool:
    return float(value) >= 40


def _beyond_high_school(value: str) -> bool:
    return value.startswith(EDUCATION_PREFIXES)


def _never_married(value: str) -> bool:
    return value.replace("-", " ") == "Never married"


def _high_income(value: str) -> bool:
    return value.rstrip(".").strip() in ("50000+", ">50K")


@dataclass(frozen=True)
class Schema:
    """One file format. columns: names in file order; distinct: values per nominal column in the
    full training file (from the UCI ``.names`` file: nominal input width without data)."""

    folder: str
    train_file: str
    test_file: str
    columns: tuple[str, ...]
    continuous: tuple[str, ...]
    ignored: tuple[str, ...]
    task_columns: dict[str, tuple[str, ...]]
    distinct: dict[str, int]


TASK_RULES: dict[str, tuple[str, Callable[[str], bool]]] = {
    "age": ("age", _age_bracket),
    "education": ("education", _beyond_high_school),
    "never_married": ("marital_status", _never_married),
    "income": ("income", _high_income),
}

KDD = Schema(
    folder="census",
    train_file="census-income.data",
    test_file="census-income.test",
    columns=(
        "age",
        "class_of_worker",
        "industry_code",
        "occupation_code",
        "education",
        "wage_per_hour",
        "enrolled_in_education",
        "marital_status",
        "major_industry",
        "major_occupation",
        "race",
        "hispanic_origin",
        "sex",
        "union_member",
        "unemployment_reason",
        "employment_status",
        "capital_gains",
        "capital_losses",
        "dividends",
        "tax_filer_status",
        "previous_region",
        "previous_state",
        "household_family_status",
        "household_summary",
        "instance_weight",
        "migration_msa",
        "migration_region",
        "migration_within_region",
        "same_house_last_year",
        "migration_sunbelt",
        "persons_worked_for_employer",
        "family_members_under_18",
        "father_birth_country",
        "mother_birth_country",
        "birth_country",
        "citizenship",
        "own_business",
        "veterans_questionnaire",
        "veterans_benefits",
        "weeks_worked",
        "year",
        "income",
    ),
    continuous=(
        "age",
        "wage_per_hour",
        "capital_gains",
        "capital_losses",
        "dividends",
        "persons_worked_for_employer",
        "weeks_worked",
    ),
    ignored=("instance_weight", "income"),
    task_columns={
        "age": ("age",),
        "education": ("education",),
        "never_married": ("marital_status",),
        "income": (),
    },
    distinct={
        "class_of_worker": 9,
        "industry_code": 52,
        "occupation_code": 47,
        "education": 17,
        "enrolled_in_education": 3,
        "marital_status": 7,
        "major_industry": 24,
        "major_occupation": 15,
        "race": 5,
        "hispanic_origin": 10,
        "sex": 2,
        "union_member": 3,
        "unemployment_reason": 6,
        "employment_status": 8,
        "tax_filer_status": 6,
        "previous_region": 6,
        "previous_state": 51,
        "household_family_status": 38,
        "household_summary": 8,
        "migration_msa": 10,
        "migration_region": 9,
        "migration_within_region": 10,
        "same_house_last_year": 3,
        "migration_sunbelt": 4,
        "family_members_under_18": 5,
        "father_birth_country": 43,
        "mother_birth_country": 43,
        "birth_country": 43,
        "citizenship": 5,
        "own_business": 3,
        "veterans_questionnaire": 3,
        "veterans_benefits": 3,
        "year": 2,
    },
)

ADULT = Schema(
    folder="adult",
    train_file="adult.data",
    test_file="adult.test",
    columns=(
        "age",
        "workclass",
        "fnlwgt",
        "education",
        "education_num",
        "marital_status",
        "occupation",
        "relationship",
        "race",
        "sex",
        "capital_gain",
        "capital_loss",
        "hours_per_week",
        "native_country",
        "income",
    ),
    continuous=("age", "education_num", "capital_gain", "capital_loss", "hours_per_week"),
    ignored=("fnlwgt", "income"),
    task_columns={
        "age": ("age",),
        "education": ("education", "education_num"),
        "never_married": ("marital_status",),
        "income": (),
    },
    distinct={
        "workclass": 9,
        "education": 16,
        "marital_status": 7,
        "occupation": 15,
        "relationship": 6,
        "race": 5,
        "sex": 2,
        "native_country": 42,
    },
)
SCHEMAS = {"kdd": KDD, "adult": ADULT}


def input_columns(schema: Schema, tasks: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(continuous, nominal) input columns, in file order, for a choice of tasks."""
    excluded = set(schema.ignored).union(*(schema.task_columns[t] for t in tasks))
    kept = [c for c in schema.columns if c not in excluded]
    return [c for c in kept if c in schema.continuous], [
        c for c in kept if c not in schema.continuous
    ]
