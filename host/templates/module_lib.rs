//! The {{name}} module. Owns command topic `{{name}}`; listens to
//! `orders.events`/`placed` as an example of a subscription.

use serde::{Deserialize, Serialize};
use switchyard_sdk::{Ctx, Error, Module};

const EVENTS: &str = "{{name}}.events";

#[derive(Deserialize, schemars::JsonSchema)]
struct Create {
    id: String,
    note: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Get {
    id: String,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Item {
    id: String,
    note: String,
}

fn module() -> Module {
    Module::new("{{name}}", env!("CARGO_PKG_VERSION"))
        .command("{{name}}", "create", create)
        .command("{{name}}", "get", get)
        .on_event("orders.events", "placed", on_order_placed)
        .emits(EVENTS)
}

switchyard_sdk::export_module!(module);

fn create(ctx: &Ctx, cmd: Create) -> Result<Item, Error> {
    if cmd.id.is_empty() {
        return Err(Error::invalid("id must not be empty"));
    }
    if ctx.get::<Item>("items", &cmd.id)?.is_some() {
        return Err(Error::rejected(format!("item '{}' already exists", cmd.id)));
    }
    let item = Item { id: cmd.id, note: cmd.note };
    // Some(0): must still not exist at commit. If another message created it
    // meanwhile, this is a version conflict: the host runs the message again
    // and the check above answers "already exists". Any other error (store
    // down, value too large) keeps its own kind.
    ctx.put("items", &item.id, &item, Some(0))?;
    ctx.emit(EVENTS, "created", &serde_json::json!({"id": item.id}))?;
    Ok(item)
}

fn get(ctx: &Ctx, q: Get) -> Result<Item, Error> {
    ctx.get::<Item>("items", &q.id)?
        .map(|v| v.value)
        .ok_or_else(|| Error::rejected(format!("unknown item '{}'", q.id)))
}

fn on_order_placed(ctx: &Ctx, order: serde_json::Value) -> Result<(), Error> {
    ctx.info(format!("an order was placed: {order}"));
    Ok(())
}

// Run natively, without wasm or a host: `cargo test-native -p {{name}}` in
// the modules' workspace (`cargo test --target <this machine's target>`).
#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchyard_sdk::testing::Kit;

    use super::*;

    #[test]
    fn create_stores_the_item_once_and_emits_created() {
        let kit = Kit::new(module());
        let item = json!({"id": "a", "note": "hello"});
        assert_eq!(kit.command("{{name}}", "create", &item), Ok(item.clone()));
        assert!(kit.emitted(EVENTS, "created"));
        assert_eq!(kit.command("{{name}}", "get", json!({"id": "a"})), Ok(item));
        assert_eq!(
            kit.command("{{name}}", "create", json!({"id": "a", "note": "again"})),
            Err(Error::rejected("item 'a' already exists"))
        );
        assert_eq!(kit.events().len(), 1);
    }

    #[test]
    fn an_order_placed_is_logged() {
        let kit = Kit::new(module());
        kit.event("orders.events", "placed", json!({"order_id": "o1"}))
            .unwrap();
        assert!(kit.logged("an order was placed"));
    }
}
