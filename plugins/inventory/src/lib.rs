//! The inventory module: stock per sku. Owns topic `inventory`; reserves stock
//! when `orders.events`/`placed` arrives and says so on `inventory.events`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchyard_sdk::{Ctx, Error, Module};

const STOCK: &str = "stock";
const EVENTS: &str = "inventory.events";

/// The stock of one sku.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Stock {
    sku: String,
    available: u64,
}

/// Adds `qty` units of `sku` to the stock.
#[derive(Deserialize, JsonSchema)]
struct Restock {
    /// The stock-keeping unit, e.g. `apple`.
    sku: String,
    /// Units received; at least 1.
    qty: u64,
}

/// The stock of one sku.
#[derive(Deserialize, JsonSchema)]
struct Get {
    sku: String,
}

/// An order was placed: reserve its stock.
#[derive(Deserialize, JsonSchema)]
struct OrderPlaced {
    order_id: String,
    sku: String,
    qty: u64,
}

/// Stock was added.
#[derive(Serialize, JsonSchema)]
struct Restocked<'a> {
    sku: &'a str,
    qty: u64,
    available: u64,
}

/// Stock set aside for an order (`reserved`), or not enough of it (`out-of-stock`).
#[derive(Serialize, JsonSchema)]
struct Reservation<'a> {
    order_id: &'a str,
    sku: &'a str,
    qty: u64,
    available: u64,
}

fn module() -> Module {
    Module::new("inventory", env!("CARGO_PKG_VERSION"))
        .command("inventory", "restock", restock)
        .command("inventory", "get", get)
        .on_event("orders.events", "placed", reserve)
        .emits_event::<Restocked>(EVENTS, "restocked")
        .emits_event::<Reservation>(EVENTS, "reserved")
        .emits_event::<Reservation>(EVENTS, "out-of-stock")
}

switchyard_sdk::export_module!(module);

fn restock(ctx: &Ctx, cmd: Restock) -> Result<Stock, Error> {
    if cmd.sku.is_empty() {
        return Err(Error::invalid("sku must not be empty"));
    }
    if cmd.qty == 0 {
        return Err(Error::rejected("qty must be at least 1"));
    }
    let current = ctx.get::<Stock>(STOCK, &cmd.sku)?;
    let (available, version) = current.map_or((0, 0), |s| (s.value.available, s.version));
    let stock = Stock {
        available: available
            .checked_add(cmd.qty)
            .ok_or_else(|| Error::rejected("stock would overflow"))?,
        sku: cmd.sku,
    };
    ctx.put(STOCK, &stock.sku, &stock, Some(version))?;
    ctx.emit_with_headers(
        EVENTS,
        "restocked",
        &Restocked {
            sku: &stock.sku,
            qty: cmd.qty,
            available: stock.available,
        },
        &[("partition-key", &stock.sku)],
    )?;
    Ok(stock)
}

fn get(ctx: &Ctx, q: Get) -> Result<Stock, Error> {
    match ctx.get::<Stock>(STOCK, &q.sku)? {
        Some(s) => Ok(s.value),
        None => Err(Error::rejected(format!("unknown sku '{}'", q.sku))),
    }
}

fn reserve(ctx: &Ctx, placed: OrderPlaced) -> Result<(), Error> {
    let current = ctx.get::<Stock>(STOCK, &placed.sku)?;
    let (available, version) = current.map_or((0, 0), |s| (s.value.available, s.version));
    let headers = [("partition-key", placed.order_id.as_str())];
    if available >= placed.qty {
        let left = available - placed.qty;
        ctx.put(
            STOCK,
            &placed.sku,
            &Stock {
                sku: placed.sku.clone(),
                available: left,
            },
            Some(version),
        )?;
        let body = Reservation {
            order_id: &placed.order_id,
            sku: &placed.sku,
            qty: placed.qty,
            available: left,
        };
        ctx.emit_with_headers(EVENTS, "reserved", &body, &headers)?;
        ctx.info(format!(
            "reserved {} x {} for {}",
            placed.qty, placed.sku, placed.order_id
        ));
    } else {
        let body = Reservation {
            order_id: &placed.order_id,
            sku: &placed.sku,
            qty: placed.qty,
            available,
        };
        ctx.emit_with_headers(EVENTS, "out-of-stock", &body, &headers)?;
        ctx.warn(format!(
            "out of stock: {} wants {} x {}, {} left",
            placed.order_id, placed.qty, placed.sku, available
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchyard_sdk::testing::Kit;

    use super::*;

    fn kit() -> Kit {
        Kit::new(module())
    }

    #[test]
    fn restock_adds_to_the_stock_and_says_so() {
        let kit = kit();
        assert_eq!(
            kit.command("inventory", "restock", json!({"sku": "apple", "qty": 5})),
            Ok(json!({"sku": "apple", "available": 5}))
        );
        kit.command("inventory", "restock", json!({"sku": "apple", "qty": 2}))
            .unwrap();
        assert_eq!(
            kit.doc(STOCK, "apple"),
            Some(json!({"sku": "apple", "available": 7}))
        );
        assert_eq!(kit.version(STOCK, "apple"), 2);
        assert_eq!(
            kit.emitted_body(EVENTS, "restocked"),
            json!({"sku": "apple", "qty": 2, "available": 7})
        );
    }

    #[test]
    fn restock_refuses_nothing_and_names_a_missing_field() {
        let kit = kit();
        assert_eq!(
            kit.command("inventory", "restock", json!({"sku": "apple", "qty": 0})),
            Err(Error::rejected("qty must be at least 1"))
        );
        match kit.command("inventory", "restock", json!({"sku": "apple"})) {
            Err(Error::Invalid(m)) => assert!(m.contains("missing field `qty`"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(kit.events().is_empty());
    }

    #[test]
    fn get_answers_the_stock_or_rejects_an_unknown_sku() {
        let kit = kit();
        kit.seed(STOCK, "pear", &json!({"sku": "pear", "available": 3}));
        assert_eq!(
            kit.command("inventory", "get", json!({"sku": "pear"})),
            Ok(json!({"sku": "pear", "available": 3}))
        );
        assert_eq!(
            kit.command("inventory", "get", json!({"sku": "durian"})),
            Err(Error::rejected("unknown sku 'durian'"))
        );
    }

    #[test]
    fn a_placed_order_is_reserved_while_stock_lasts() {
        let kit = kit();
        kit.seed(STOCK, "apple", &json!({"sku": "apple", "available": 5}));
        let placed = |id: &str, qty: u64| json!({"order_id": id, "sku": "apple", "qty": qty});
        kit.event("orders.events", "placed", placed("o1", 2))
            .unwrap();
        assert!(kit.emitted(EVENTS, "reserved"));
        kit.event("orders.events", "placed", placed("o2", 10))
            .unwrap();
        assert_eq!(
            kit.emitted_body(EVENTS, "out-of-stock"),
            json!({"order_id": "o2", "sku": "apple", "qty": 10, "available": 3})
        );
        assert_eq!(
            kit.doc(STOCK, "apple"),
            Some(json!({"sku": "apple", "available": 3}))
        );
        assert!(kit.logged("out of stock: o2"));
        let keys: Vec<String> = kit
            .events()
            .iter()
            .map(|e| e.headers["partition-key"].clone())
            .collect();
        assert_eq!(keys, ["o1", "o2"]);
    }

    #[test]
    fn other_order_events_are_ignored() {
        let kit = kit();
        assert_eq!(
            kit.event("orders.events", "confirmed", json!({"order_id": "o1"})),
            Ok(json!(null))
        );
        assert!(kit.events().is_empty());
    }

    #[test]
    fn describe_lists_topics_subscriptions_and_emits() {
        let d = kit().describe();
        assert_eq!(d.topics, ["inventory"]);
        assert_eq!(d.subscribes, ["orders.events"]);
        assert_eq!(d.emits, [EVENTS]);
    }
}
