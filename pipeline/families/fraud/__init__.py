"""Risk control: fraud scores for orders, with late labels (issue 28; not yet a row of the family
table). What exists: orders, labels as known at a time, and point-in-time features
(``pipeline.families.fraud.orders``). The model, its floors, the decision bands, the gate, the
Bento and the monitoring follow; until then the family is not registered."""
