"""Features in SQL: the stage SELECTs (.sql files), the feature views and the refresher that keeps them."""
