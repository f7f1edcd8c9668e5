//! The orders module. Owns topic `orders`: `place` checks the sku against
//! inventory's collection (granted by `reads = ["inventory"]`), stores the
//! order as `placed` and emits `orders.events`/`placed`; the answer from
//! inventory (`reserved` / `out-of-stock`) confirms or rejects it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use switchyard_sdk::{Ctx, Error, Module};

const ORDERS: &str = "orders";
const EVENTS: &str = "orders.events";

/// An order and where it stands: `placed`, then `confirmed` or `rejected`.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Order {
    order_id: String,
    sku: String,
    qty: u64,
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Places an order for `qty` units of `sku`.
#[derive(Deserialize, JsonSchema)]
struct Place {
    order_id: String,
    sku: String,
    qty: u64,
}

/// An order by its id.
#[derive(Deserialize, JsonSchema)]
struct Get {
    order_id: String,
}

/// What inventory says about an order.
#[derive(Deserialize, JsonSchema)]
struct StockAnswer {
    order_id: String,
    #[serde(default)]
    available: Option<u64>,
}

/// Just enough of inventory's stock document to know the sku exists.
#[derive(Deserialize)]
struct Stock {}

/// An order was placed.
#[derive(Serialize, JsonSchema)]
struct Placed<'a> {
    order_id: &'a str,
    sku: &'a str,
    qty: u64,
}

/// An order was settled (`confirmed` or `rejected`).
#[derive(Serialize, JsonSchema)]
struct Settled<'a> {
    order_id: &'a str,
}

fn module() -> Module {
    Module::new("orders", env!("CARGO_PKG_VERSION"))
        .command("orders", "place", place)
        .command("orders", "get", get)
        .on_event(
            "inventory.events",
            "reserved",
            |ctx: &Ctx, a: StockAnswer| settle(ctx, a, "confirmed"),
        )
        .on_event(
            "inventory.events",
            "out-of-stock",
            |ctx: &Ctx, a: StockAnswer| settle(ctx, a, "rejected"),
        )
        .emits_event::<Placed>(EVENTS, "placed")
        .emits_event::<Settled>(EVENTS, "confirmed")
        .emits_event::<Settled>(EVENTS, "rejected")
}

switchyard_sdk::export_module!(module);

fn place(ctx: &Ctx, cmd: Place) -> Result<Order, Error> {
    if cmd.order_id.is_empty() || cmd.sku.is_empty() {
        return Err(Error::invalid("order_id and sku must not be empty"));
    }
    if cmd.qty == 0 {
        return Err(Error::rejected("qty must be at least 1"));
    }
    if ctx.read::<Stock>("inventory", "stock", &cmd.sku)?.is_none() {
        return Err(Error::rejected(format!("unknown sku '{}'", cmd.sku)));
    }
    if ctx.get::<Order>(ORDERS, &cmd.order_id)?.is_some() {
        return Err(Error::rejected(format!(
            "order '{}' already exists",
            cmd.order_id
        )));
    }
    let order = Order {
        order_id: cmd.order_id,
        sku: cmd.sku,
        qty: cmd.qty,
        status: "placed".to_string(),
        currency: ctx.config("currency"),
        reason: None,
    };
    ctx.put(ORDERS, &order.order_id, &order, Some(0))?;
    ctx.emit_with_headers(
        EVENTS,
        "placed",
        &Placed {
            order_id: &order.order_id,
            sku: &order.sku,
            qty: order.qty,
        },
        &[("partition-key", &order.order_id)],
    )?;
    Ok(order)
}

fn get(ctx: &Ctx, q: Get) -> Result<Order, Error> {
    ctx.get::<Order>(ORDERS, &q.order_id)?
        .map(|o| o.value)
        .ok_or_else(|| Error::rejected(format!("unknown order '{}'", q.order_id)))
}

fn settle(ctx: &Ctx, answer: StockAnswer, status: &str) -> Result<(), Error> {
    let Some(mut order) = ctx.get::<Order>(ORDERS, &answer.order_id)? else {
        ctx.warn(format!(
            "inventory answered for unknown order '{}'",
            answer.order_id
        ));
        return Ok(());
    };
    if order.value.status != "placed" {
        return Ok(());
    }
    order.value.status = status.to_string();
    if status == "rejected" {
        order.value.reason = Some(format!(
            "out of stock ({} available)",
            answer.available.unwrap_or(0)
        ));
    }
    ctx.put(ORDERS, &answer.order_id, &order.value, Some(order.version))?;
    ctx.emit_with_headers(
        EVENTS,
        status,
        &Settled {
            order_id: &answer.order_id,
        },
        &[("partition-key", &answer.order_id)],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchyard_sdk::testing::Kit;

    use super::*;

    /// Orders with inventory's apples in stock and the manifest's grants.
    fn kit() -> Kit {
        let kit = Kit::new(module())
            .reads("inventory")
            .config("currency", "EUR");
        kit.seed_for(
            "inventory",
            "stock",
            "apple",
            &json!({"sku": "apple", "available": 5}),
        );
        kit
    }

    fn place(kit: &Kit, id: &str, qty: u64) -> Result<serde_json::Value, Error> {
        kit.command(
            "orders",
            "place",
            json!({"order_id": id, "sku": "apple", "qty": qty}),
        )
    }

    #[test]
    fn place_stores_the_order_and_emits_placed() {
        let kit = kit();
        let answer = place(&kit, "o1", 2).unwrap();
        assert_eq!(answer["status"], "placed");
        assert_eq!(answer["currency"], "EUR");
        assert_eq!(
            kit.emitted_body(EVENTS, "placed"),
            json!({"order_id": "o1", "sku": "apple", "qty": 2})
        );
        assert_eq!(kit.events()[0].headers["partition-key"], "o1");
        assert_eq!(kit.version(ORDERS, "o1"), 1);
    }

    #[test]
    fn place_rejects_an_unknown_sku_a_zero_qty_and_a_second_order_with_the_same_id() {
        let kit = kit();
        assert_eq!(
            kit.command(
                "orders",
                "place",
                json!({"order_id": "o1", "sku": "durian", "qty": 1})
            ),
            Err(Error::rejected("unknown sku 'durian'"))
        );
        assert_eq!(
            place(&kit, "o1", 0),
            Err(Error::rejected("qty must be at least 1"))
        );
        place(&kit, "o1", 1).unwrap();
        assert_eq!(
            place(&kit, "o1", 1),
            Err(Error::rejected("order 'o1' already exists"))
        );
        assert_eq!(kit.events().len(), 1);
    }

    #[test]
    fn place_needs_the_read_grant_on_inventory() {
        let kit = Kit::new(module());
        match place(&kit, "o1", 1) {
            Err(Error::Invalid(m)) => assert!(m.contains("may not read module 'inventory'"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(kit.version(ORDERS, "o1"), 0);
    }

    #[test]
    fn reserved_confirms_and_out_of_stock_rejects() {
        let kit = kit();
        place(&kit, "o1", 2).unwrap();
        place(&kit, "o2", 10).unwrap();
        kit.event(
            "inventory.events",
            "reserved",
            json!({"order_id": "o1", "available": 3}),
        )
        .unwrap();
        kit.event(
            "inventory.events",
            "out-of-stock",
            json!({"order_id": "o2", "available": 3}),
        )
        .unwrap();
        assert!(kit.emitted(EVENTS, "confirmed"));
        assert!(kit.emitted(EVENTS, "rejected"));
        let o1 = kit
            .command("orders", "get", json!({"order_id": "o1"}))
            .unwrap();
        assert_eq!(o1["status"], "confirmed");
        let o2 = kit
            .command("orders", "get", json!({"order_id": "o2"}))
            .unwrap();
        assert_eq!(o2["status"], "rejected");
        assert_eq!(o2["reason"], "out of stock (3 available)");
        assert_eq!(kit.version(ORDERS, "o1"), 2);
    }

    #[test]
    fn an_answer_is_applied_once_and_an_unknown_order_only_warns() {
        let kit = kit();
        place(&kit, "o1", 2).unwrap();
        kit.event("inventory.events", "reserved", json!({"order_id": "o1"}))
            .unwrap();
        kit.clear_events();
        // A late out-of-stock for a settled order changes nothing.
        kit.event(
            "inventory.events",
            "out-of-stock",
            json!({"order_id": "o1"}),
        )
        .unwrap();
        assert!(kit.events().is_empty());
        assert_eq!(
            kit.doc::<serde_json::Value>(ORDERS, "o1").unwrap()["status"],
            "confirmed"
        );
        kit.event("inventory.events", "reserved", json!({"order_id": "nope"}))
            .unwrap();
        assert!(kit.logged("unknown order 'nope'"));
    }
}
