"""Time budgets are reported against measured wall times: the table marks what is over."""
from dslib.jobs.budgets import budget_rows, budget_table


def test_rows_mark_notebooks_and_the_book_over_their_budgets():
    rows = budget_rows({"06_3d_parallel": 95.0, "00_tour": 12.0}, "smoke")
    assert [(r["notebook"], r["over"]) for r in rows] == [("00_tour", False), ("06_3d_parallel", True),
                                                         ("whole book", False)]
    cpu = budget_rows({f"{i:02d}": 200.0 for i in range(10)}, "cpu")
    assert not any(r["over"] for r in cpu[:-1]) and cpu[-1]["over"]  # 2000 s > the book's 1800 s


def test_table_names_the_profile_and_flags_over():
    table = budget_table({"06_3d_parallel": 95.0}, "smoke")
    assert "smoke" in table and "OVER" in table.splitlines()[2]
    assert "OVER" not in budget_table({"06_3d_parallel": 60.0}, "smoke")
