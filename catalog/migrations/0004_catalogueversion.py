from __future__ import annotations

from django.db import migrations, models
from django.utils import timezone


def create_row(apps, schema_editor) -> None:  # noqa: ANN001
    apps.get_model("catalog", "CatalogueVersion").objects.create(pk=1, number=0, changed_at=timezone.now())


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0003_book_list_indexes"),
    ]

    operations = [
        migrations.CreateModel(
            name="CatalogueVersion",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("number", models.BigIntegerField(default=0)),
                ("changed_at", models.DateTimeField()),
            ],
        ),
        migrations.RunPython(create_row, migrations.RunPython.noop),
    ]
