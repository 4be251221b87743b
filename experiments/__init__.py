"""Research diagnostics written while tuning the release recipe (not installed with the product).

Each runs from a checkout, e.g. ``python -m experiments.regions --data VALDIR --checkpoint RUN/best.pt
--out R``; ``docs/release-recipe.md`` tells which runs they informed.
"""
