from automations import delivery_admin  # noqa: F401  (registers DeliveryAdmin)
