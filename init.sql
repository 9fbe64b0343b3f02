-- CloudMart sagas: every table, for MySQL 8.0 and MariaDB 10.11.
-- Generated from activities/tables.py and engine/adapters/sql_tables.py by
-- `cloudmart db sql`; edit those, not this file (tests/unit/test_schema.py checks they agree).

CREATE TABLE IF NOT EXISTS books (
	book_id INTEGER NOT NULL AUTO_INCREMENT,
	title VARCHAR(500) NOT NULL,
	price NUMERIC(12, 2) NOT NULL,
	PRIMARY KEY (book_id),
	CONSTRAINT ck_books_price CHECK (price >= 0)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS customers (
	customer_id INTEGER NOT NULL AUTO_INCREMENT,
	name VARCHAR(200) NOT NULL,
	email VARCHAR(320) NOT NULL,
	balance NUMERIC(12, 2) NOT NULL,
	PRIMARY KEY (customer_id),
	CONSTRAINT ck_customers_balance CHECK (balance >= 0),
	UNIQUE (email)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS inbox (
	message_key VARCHAR(191) NOT NULL,
	order_id VARCHAR(64) NOT NULL,
	operation VARCHAR(64) NOT NULL,
	outcome MEDIUMTEXT NOT NULL,
	created_at DATETIME(6) NOT NULL,
	PRIMARY KEY (message_key),
	INDEX ix_inbox_order (order_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS ledger_entries (
	id BIGINT NOT NULL AUTO_INCREMENT,
	account VARCHAR(16) NOT NULL,
	account_id INTEGER NOT NULL,
	bucket VARCHAR(16) NOT NULL,
	delta NUMERIC(14, 2) NOT NULL,
	order_id VARCHAR(64),
	operation VARCHAR(64) NOT NULL,
	created_at DATETIME(6) NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT ck_ledger_account CHECK (account IN ('customer', 'book')),
	CONSTRAINT ck_ledger_bucket CHECK (bucket IN ('balance', 'available', 'reserved', 'shipped')),
	INDEX ix_ledger_account (account, account_id, bucket, delta),
	INDEX ix_ledger_order (order_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS order_events (
	id BIGINT NOT NULL AUTO_INCREMENT,
	event_id VARCHAR(36) NOT NULL,
	order_id VARCHAR(64) NOT NULL,
	event_type VARCHAR(64) NOT NULL,
	producer VARCHAR(32) NOT NULL,
	sequence INTEGER NOT NULL,
	occurred_at DATETIME(6) NOT NULL,
	received_at DATETIME(6) NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (event_id),
	INDEX ix_order_events_order (order_id, id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS outbox (
	id BIGINT NOT NULL AUTO_INCREMENT,
	event_id VARCHAR(36) NOT NULL,
	order_id VARCHAR(64) NOT NULL,
	sequence INTEGER NOT NULL,
	topic VARCHAR(100) NOT NULL,
	event_type VARCHAR(64) NOT NULL,
	payload MEDIUMTEXT NOT NULL,
	created_at DATETIME(6) NOT NULL,
	published_at DATETIME(6),
	PRIMARY KEY (id),
	UNIQUE (event_id),
	INDEX ix_outbox_order_seq (order_id, sequence),
	INDEX ix_outbox_unpublished (published_at, event_type, id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS processed_events (
	service VARCHAR(32) NOT NULL,
	event_id VARCHAR(36) NOT NULL,
	order_id VARCHAR(64) NOT NULL,
	event_type VARCHAR(64) NOT NULL,
	processed_at DATETIME(6) NOT NULL,
	PRIMARY KEY (service, event_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS saga_instances (
	saga_id VARCHAR(36) NOT NULL,
	order_id VARCHAR(64) NOT NULL,
	workflow_name VARCHAR(100) NOT NULL,
	status VARCHAR(32) NOT NULL,
	current_step VARCHAR(100),
	input MEDIUMTEXT NOT NULL,
	result MEDIUMTEXT,
	failure_reason MEDIUMTEXT,
	owner VARCHAR(100),
	lease_expires_at DATETIME(6),
	version INTEGER NOT NULL,
	next_seq INTEGER NOT NULL,
	needs_operator BOOL NOT NULL,
	cancel_requested BOOL NOT NULL,
	compensation_attempts INTEGER NOT NULL,
	created_at DATETIME(6) NOT NULL,
	updated_at DATETIME(6) NOT NULL,
	failed_step VARCHAR(100),
	past_pivot BOOL NOT NULL DEFAULT false,
	operator_request_id VARCHAR(36),
	operator_request MEDIUMTEXT,
	PRIMARY KEY (saga_id),
	UNIQUE (order_id),
	INDEX ix_saga_instances_created (created_at),
	INDEX ix_saga_instances_failed_step_created (failed_step, created_at),
	INDEX ix_saga_instances_operator_created (needs_operator, created_at),
	INDEX ix_saga_instances_recovery (status, lease_expires_at),
	INDEX ix_saga_instances_status_created (status, created_at),
	INDEX ix_saga_instances_workflow_created (workflow_name, created_at)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS saga_step_logs (
	saga_id VARCHAR(36) NOT NULL,
	seq INTEGER NOT NULL,
	event_type VARCHAR(40) NOT NULL,
	position INTEGER,
	step_name VARCHAR(100),
	attempt INTEGER NOT NULL,
	payload MEDIUMTEXT,
	owner VARCHAR(100),
	version INTEGER NOT NULL,
	created_at DATETIME(6) NOT NULL,
	PRIMARY KEY (saga_id, seq)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS shipping_prerequisites (
	order_id VARCHAR(64) NOT NULL,
	stock_reserved BOOL NOT NULL,
	payment_completed BOOL NOT NULL,
	shipping_address MEDIUMTEXT,
	updated_at DATETIME(6) NOT NULL,
	PRIMARY KEY (order_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS inventory (
	book_id INTEGER NOT NULL,
	available INTEGER NOT NULL,
	reserved INTEGER NOT NULL,
	PRIMARY KEY (book_id),
	CONSTRAINT ck_inventory_available CHECK (available >= 0),
	CONSTRAINT ck_inventory_reserved CHECK (reserved >= 0),
	FOREIGN KEY(book_id) REFERENCES books (book_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS orders (
	order_id VARCHAR(64) NOT NULL,
	customer_id INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	total_amount NUMERIC(12, 2) NOT NULL,
	shipping_address MEDIUMTEXT NOT NULL,
	created_at DATETIME(6) NOT NULL,
	updated_at DATETIME(6) NOT NULL,
	PRIMARY KEY (order_id),
	CONSTRAINT ck_orders_status CHECK (status IN ('PENDING', 'COMPLETED', 'CANCELLED')),
	CONSTRAINT ck_orders_total CHECK (total_amount >= 0),
	FOREIGN KEY(customer_id) REFERENCES customers (customer_id),
	INDEX ix_orders_status_created (status, created_at)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS order_items (
	order_id VARCHAR(64) NOT NULL,
	book_id INTEGER NOT NULL,
	quantity INTEGER NOT NULL,
	unit_price NUMERIC(12, 2) NOT NULL,
	PRIMARY KEY (order_id, book_id),
	CONSTRAINT ck_order_items_quantity CHECK (quantity > 0),
	FOREIGN KEY(book_id) REFERENCES books (book_id),
	FOREIGN KEY(order_id) REFERENCES orders (order_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS payments (
	order_id VARCHAR(64) NOT NULL,
	customer_id INTEGER NOT NULL,
	amount NUMERIC(12, 2) NOT NULL,
	status VARCHAR(16) NOT NULL,
	created_at DATETIME(6) NOT NULL,
	updated_at DATETIME(6) NOT NULL,
	PRIMARY KEY (order_id),
	CONSTRAINT ck_payments_amount CHECK (amount >= 0),
	CONSTRAINT ck_payments_status CHECK (status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'REFUNDED')),
	FOREIGN KEY(customer_id) REFERENCES customers (customer_id),
	FOREIGN KEY(order_id) REFERENCES orders (order_id),
	INDEX ix_payments_screening (customer_id, status, created_at, amount)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS shipments (
	order_id VARCHAR(64) NOT NULL,
	status VARCHAR(16) NOT NULL,
	country VARCHAR(2) NOT NULL,
	address MEDIUMTEXT NOT NULL,
	tracking_number VARCHAR(64),
	reason VARCHAR(500),
	created_at DATETIME(6) NOT NULL,
	updated_at DATETIME(6) NOT NULL,
	PRIMARY KEY (order_id),
	CONSTRAINT ck_shipments_status CHECK (status IN ('ARRANGED', 'CANCELLED', 'FAILED')),
	FOREIGN KEY(order_id) REFERENCES orders (order_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

CREATE TABLE IF NOT EXISTS stock_reservations (
	order_id VARCHAR(64) NOT NULL,
	book_id INTEGER NOT NULL,
	quantity INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	updated_at DATETIME(6) NOT NULL,
	PRIMARY KEY (order_id, book_id),
	CONSTRAINT ck_stock_reservations_quantity CHECK (quantity > 0),
	CONSTRAINT ck_stock_reservations_status CHECK (status IN ('RESERVED', 'RELEASED', 'CONSUMED')),
	FOREIGN KEY(book_id) REFERENCES books (book_id),
	FOREIGN KEY(order_id) REFERENCES orders (order_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin;

-- The ledger's opening entries for rows inserted directly (cloudmart check).
DROP TRIGGER IF EXISTS tr_customers_ledger_opening;

CREATE TRIGGER tr_customers_ledger_opening AFTER INSERT ON customers
FOR EACH ROW INSERT INTO ledger_entries (account, account_id, bucket, delta, order_id, operation, created_at) VALUES ('customer', NEW.customer_id, 'balance', NEW.balance, NULL, 'opening', UTC_TIMESTAMP(6));

DROP TRIGGER IF EXISTS tr_inventory_ledger_opening;

CREATE TRIGGER tr_inventory_ledger_opening AFTER INSERT ON inventory
FOR EACH ROW INSERT INTO ledger_entries (account, account_id, bucket, delta, order_id, operation, created_at) VALUES ('book', NEW.book_id, 'available', NEW.available, NULL, 'opening', UTC_TIMESTAMP(6)), ('book', NEW.book_id, 'reserved', NEW.reserved, NULL, 'opening', UTC_TIMESTAMP(6));

-- Rows from before the ledger open their accounts with what they hold.
INSERT INTO ledger_entries (account, account_id, bucket, delta, order_id, operation, created_at) SELECT 'customer', c.customer_id, 'balance', c.balance, NULL, 'opening', UTC_TIMESTAMP(6) FROM customers c WHERE NOT EXISTS (SELECT 1 FROM ledger_entries l WHERE l.account = 'customer' AND l.account_id = c.customer_id);

INSERT INTO ledger_entries (account, account_id, bucket, delta, order_id, operation, created_at) SELECT 'book', i.book_id, b.bucket, CASE b.bucket WHEN 'available' THEN i.available WHEN 'reserved' THEN i.reserved ELSE COALESCE((SELECT SUM(r.quantity) FROM stock_reservations r WHERE r.book_id = i.book_id AND r.status = 'CONSUMED'), 0) END, NULL, 'opening', UTC_TIMESTAMP(6) FROM inventory i CROSS JOIN (SELECT 'available' AS bucket UNION ALL SELECT 'reserved' UNION ALL SELECT 'shipped') b WHERE NOT EXISTS (SELECT 1 FROM ledger_entries l WHERE l.account = 'book' AND l.account_id = i.book_id);
