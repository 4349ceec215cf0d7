"""The admin's user forms, with the same username rules as registration."""

from __future__ import annotations

from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm

from accounts.models import User
from accounts.usernames import username_validate


class UserCreateForm(AdminUserCreationForm):
    class Meta(AdminUserCreationForm.Meta):
        model = User

    def clean_username(self) -> str | None:  # type: ignore[override]  # Django's returns None too, for a taken name
        username = super().clean_username()  # None when Django found the name taken (its error is recorded)
        return None if username is None else username_validate(username)


class UserEditForm(UserChangeForm):
    class Meta(UserChangeForm.Meta):
        model = User

    def clean_username(self) -> str:
        username = self.cleaned_data["username"]
        if "username" not in self.changed_data:
            return username  # names from before the rules are kept as they are
        return username_validate(username, exclude_pk=self.instance.pk)
