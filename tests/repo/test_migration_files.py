from pathlib import Path

from acme_orders.core.database import migration_files, migrations_dir


def test_baseline_comes_first_then_numbered_files_in_numeric_order(tmp_path: Path) -> None:
    for name in ("init.sql", "10_later.sql", "002_next.sql", "notes.txt", "draft.sql"):
        (tmp_path / name).write_text("")

    assert [p.name for p in migration_files(tmp_path)] == [
        "init.sql",
        "002_next.sql",
        "10_later.sql",
    ]


def test_migrations_are_found_in_the_repository_db_folder() -> None:
    assert (migrations_dir() / "init.sql").is_file()
