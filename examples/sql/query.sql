-- Completed orders and revenue of every customer in the north region who has at least
-- three completed orders. One row per customer: id, name, number of completed orders,
-- revenue in cents (quantity * price over the items of those orders).
SELECT
    c.id,
    c.name,
    (SELECT COUNT(*)
       FROM orders o
      WHERE o.customer_id = c.id AND o.status = 'complete') AS completed_orders,
    (SELECT SUM(oi.quantity * oi.price_cents)
       FROM orders o
       JOIN order_items oi ON oi.order_id = o.id
      WHERE o.customer_id = c.id AND o.status = 'complete') AS revenue_cents
FROM customers c
WHERE c.region = 'north'
  AND (SELECT COUNT(*)
         FROM orders o
        WHERE o.customer_id = c.id AND o.status = 'complete') >= 3;
