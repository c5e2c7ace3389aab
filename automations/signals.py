"""A new workspace gets the default automations (automations/defaults.py) in its creating transaction."""


def give_new_workspace_its_defaults(sender, instance, created, raw=False, **kwargs):
    if created and not raw:
        from automations.defaults import create_defaults

        create_defaults([instance.pk])
