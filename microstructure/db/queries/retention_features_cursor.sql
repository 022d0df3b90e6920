-- Has the feature refresher ever run (its cursor on the invalidation log)?
SELECT EXISTS (SELECT 1 FROM invalidation_cursors WHERE consumer = 'features')
