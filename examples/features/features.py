"""Feature transformations for the churn model.

`features(row)` gets one customer as a dict (customer_id, age, income, tenure_months,
visits_per_month and support_tickets as floats; region and plan as strings; never the label)
and returns a dict of feature name -> number. Every row must give the same names, in the same
order, at most 40 of them. The harness standardises each feature and fits a fixed logistic
regression on the training split; the metric is the AUC on the test split.
"""


def features(row):
    return {
        "age": row["age"],
        "income": row["income"],
        "tenure_months": row["tenure_months"],
        "visits_per_month": row["visits_per_month"],
        "support_tickets": row["support_tickets"],
    }
