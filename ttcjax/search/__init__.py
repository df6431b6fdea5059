"""Test-time search: strategies (`strategies`), their settings (`settings`), the compiled episode
(`episode`), answer selection (`selection`) and the host side that runs it all (`run.search`).

Layer: above `verifiers`; below `training` and `eval`."""
