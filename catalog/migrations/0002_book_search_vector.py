"""Full-text search column for PostgreSQL: a generated, GIN-indexed tsvector.

Title weighs most (A), then author names (B), then the description (C). The column is computed
by PostgreSQL on every insert and update, bulk inserts included, so it can never go stale. It is
not a model field: other databases don't have it and fall back to substring search.
"""

from django.db import migrations

CREATE = """
ALTER TABLE catalog_book ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') ||
    setweight(to_tsvector('english'::regconfig, coalesce(authors_text, '')), 'B') ||
    setweight(to_tsvector('english'::regconfig, coalesce(description, '')), 'C')
) STORED;
CREATE INDEX catalog_book_search_gin ON catalog_book USING gin (search_vector);
"""
DROP = """
DROP INDEX IF EXISTS catalog_book_search_gin;
ALTER TABLE catalog_book DROP COLUMN IF EXISTS search_vector;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
