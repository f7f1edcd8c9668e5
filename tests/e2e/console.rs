//! The operator console (issue 21) in a real browser: headless Chromium
//! driven over WebDriver (Debian's `chromium` and `chromium-driver`, which
//! `.ci/run` installs) against a real host with the example modules.
//! Screenshots of each view land under the target dir's test temp folder
//! and their paths are printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, EXAMPLES, Project, eventually};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest a page element may take to appear.
const WAIT: Duration = Duration::from_secs(15);
/// What a module error smuggles in: executed, it would set `window.pwned`.
const SCRIPT: &str = "<script>window.pwned=1</script>";

/// chromedriver on a free port, ended when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the console test needs Debian's `chromium` and \
                 `chromium-driver` (.ci/run installs them: apt-get install -y {package})"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let status = format!("{}/status", driver.url);
        eventually("chromedriver ready", WAIT, || {
            let (client, status) = (&client, &status);
            async move {
                let answer = client.get(status).send().await.ok()?;
                let body: Value = answer.json().await.ok()?;
                (body["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        driver
    }

    /// A headless Chromium session at 1280x800 that keeps the browser log.
    async fn session(&self, profile: &Path) -> Client {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,800",
                         format!("--user-data-dir={}", profile.display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a chromedriver session")
    }
}

/// chromedriver's browser log (`goog:loggingPrefs`), not part of W3C
/// WebDriver: the entries since the last read.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// Where the screenshots go: kept after the test, under the target dir.
fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let path = shots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("console screenshot: {}", path.display());
}

async fn find(client: &Client, css: &str) -> Element {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
}

async fn text(client: &Client, css: &str) -> String {
    find(client, css).await.text().await.expect("element text")
}

/// Waits until the text of `css` satisfies `check`; returns it.
async fn text_until(
    client: &Client,
    css: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    eventually(what, WAIT, || async {
        let found = client.find(Locator::Css(css)).await.ok()?;
        let text = found.text().await.ok()?;
        check(&text).then_some(text)
    })
    .await
}

async fn open_view(client: &Client, view: &str) {
    find(client, &format!("nav a[data-view=\"{view}\"]"))
        .await
        .click()
        .await
        .expect("click the view's link");
    let shown = client
        .execute(
            "return !document.getElementById('view-' + arguments[0]).hidden",
            vec![json!(view)],
        )
        .await
        .expect("script");
    assert_eq!(shown, json!(true), "view {view} is shown");
}

/// Fills a form field (input or textarea) with `value`.
async fn type_into(client: &Client, css: &str, value: &str) {
    let field = find(client, css).await;
    field.clear().await.expect("clear");
    field.send_keys(value).await.expect("type");
}

/// Sends `body` from the Send form of `topic`; returns the shown answer.
async fn send(client: &Client, topic: &str, subtopic: &str, id: &str, body: &str) -> String {
    open_view(client, "send").await;
    let form = format!("form[data-topic=\"{topic}\"]");
    type_into(client, &format!("#send-{topic}-subtopic"), subtopic).await;
    type_into(client, &format!("#send-{topic}-id"), id).await;
    type_into(client, &format!("#send-{topic}-body"), body).await;
    find(client, &format!("{form} button[type=submit]"))
        .await
        .click()
        .await
        .expect("send");
    text_until(client, &format!("{form} .answer"), "the answer", |t| {
        t.starts_with("HTTP")
    })
    .await
}

async fn handled(client: &Client, module: &str) -> String {
    text(
        client,
        &format!("article[data-module=\"{module}\"] [data-field=\"handled\"]"),
    )
    .await
}

#[tokio::test]
async fn the_console_lists_sends_dead_letters_replays_and_escapes() {
    let driver = Driver::start().await;
    let project = Project::new(&["orders", "inventory"], EXAMPLES);
    let host = project.start().await;
    let profile = tempfile::tempdir().expect("browser profile dir");
    let client = driver.session(profile.path()).await;
    client
        .goto(&format!("{}/console", host.base))
        .await
        .expect("open the console");

    // Modules: both examples, with their counts.
    find(&client, "article[data-module=\"orders\"]").await;
    assert_eq!(handled(&client, "inventory").await, "0");
    screenshot(&client, "modules").await;

    // Send: a restock answers, and inventory's handled count goes up.
    let answer = send(
        &client,
        "inventory",
        "restock",
        "console-restock-1",
        r#"{"sku": "apple", "qty": 5}"#,
    )
    .await;
    assert!(answer.starts_with("HTTP 200"), "{answer}");
    assert!(answer.contains("\"processed\""), "{answer}");
    assert!(answer.contains("\"available\": 5"), "{answer}");

    // A bad order: 422 with the module's error, which quotes the body's
    // `<script>`: shown as text, never run.
    let bad = format!(r#"{{"order_id": "o-bad", "sku": "apple", "qty": "{SCRIPT}"}}"#);
    let answer = send(&client, "orders", "place", "console-bad-1", &bad).await;
    assert!(answer.starts_with("HTTP 422 invalid"), "{answer}");
    assert!(answer.contains(SCRIPT), "the error text as text: {answer}");
    screenshot(&client, "send").await;
    assert_not_executed(&client).await;

    open_view(&client, "modules").await;
    text_until(
        &client,
        "article[data-module=\"inventory\"] [data-field=\"handled\"]",
        "inventory's handled count to go up",
        |t| t == "1",
    )
    .await;
    screenshot(&client, "modules-live").await;

    // Dead letters: asks for the token once, lists the bad order, replays it.
    open_view(&client, "dead-letters").await;
    type_into(&client, ".token-form input[type=password]", ADMIN_TOKEN).await;
    find(&client, ".token-form button[type=submit]")
        .await
        .click()
        .await
        .expect("keep the token");
    let letter = "article[data-message-id=\"console-bad-1\"]";
    let error = text(&client, &format!("{letter} [data-field=\"error\"]")).await;
    assert!(error.contains(SCRIPT), "{error}");
    find(&client, &format!("{letter} .actions button"))
        .await
        .click()
        .await
        .expect("replay");
    // The replay ran with the token (not 401); the module refuses the same
    // body again, as the API says.
    let replayed = text_until(
        &client,
        &format!("{letter} .answer"),
        "the replay's answer",
        |t| t.starts_with("HTTP"),
    )
    .await;
    assert!(replayed.starts_with("HTTP 422 invalid"), "{replayed}");
    assert!(replayed.contains(SCRIPT), "{replayed}");
    screenshot(&client, "dead-letters").await;
    assert_not_executed(&client).await;

    // Replay all of a topic: filter on it, then one button.
    type_into(&client, "#dl-topic", "orders").await;
    find(
        &client,
        "#view-dead-letters form.filters button[type=submit]",
    )
    .await
    .click()
    .await
    .expect("filter");
    find(&client, "#dl-replay-all")
        .await
        .click()
        .await
        .expect("replay all");
    let all = text_until(
        &client,
        "#view-dead-letters .answer",
        "the topic replay's answer",
        // The single replay's 422 shows there until this one answers.
        |t| t.contains("\"topic\": \"orders\""),
    )
    .await;
    assert!(all.starts_with("HTTP 200"), "{all}");
    assert!(all.contains("\"topic\": \"orders\""), "{all}");
    assert!(all.contains("\"failed\": "), "{all}");

    // Message lookup: the restock, processed by inventory, with its events.
    open_view(&client, "messages").await;
    type_into(&client, "#lookup-id", "console-restock-1").await;
    find(&client, "#view-messages button[type=submit]")
        .await
        .click()
        .await
        .expect("look up");
    find(&client, ".lookup[data-status=\"processed\"]").await;
    let inventory = text(&client, "[data-handling=\"inventory\"]").await;
    assert!(
        inventory.contains("inventory.events/restocked"),
        "{inventory}"
    );
    screenshot(&client, "messages").await;

    // Topics: owners, subscribers and each group's lag.
    open_view(&client, "topics").await;
    let row = text(&client, "tr[data-topic=\"orders.events\"]").await;
    assert!(row.contains("inventory"), "{row}");
    find(&client, "[data-field=\"outbox\"]").await;
    screenshot(&client, "topics").await;

    // Keyboard: the first Tab lands on a view link.
    client
        .goto(&format!("{}/console#modules", host.base))
        .await
        .expect("modules");
    client.refresh().await.expect("reload");
    find(&client, "article[data-module=\"orders\"]").await;
    find(&client, "body")
        .await
        .send_keys(&fantoccini::key::Key::Tab.to_string())
        .await
        .expect("tab");
    let focused = client
        .execute(
            "return document.activeElement.matches('nav a[data-view=\"modules\"]')",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(focused, json!(true), "Tab reaches the navigation");

    // A narrow window: no sideways scrolling.
    client.set_window_size(400, 800).await.expect("resize");
    find(&client, "article[data-module=\"orders\"]").await;
    let fits = client
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(fits, json!(true), "the page fits a 400 px window");
    screenshot(&client, "modules-narrow").await;

    assert_clean_log(&client).await;
    client.close().await.expect("close the browser");
    host.stop().await;
}

/// No `<script>` element came from data, and the smuggled one never ran.
async fn assert_not_executed(client: &Client) {
    let found = client
        .execute(
            "return [document.querySelectorAll('main script').length, typeof window.pwned]",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(found, json!([0, "undefined"]));
}

/// Nothing severe in the browser log but the answers the test asked for:
/// Chromium logs every 4xx a `fetch` gets, and the bad order and its
/// replay are 422 by design. A CSP violation or a script error fails.
async fn assert_clean_log(client: &Client) {
    let log = client.issue_cmd(BrowserLog).await.expect("browser log");
    let entries = log.as_array().cloned().unwrap_or_default();
    eprintln!("browser log: {} entries", entries.len());
    // The log is really read: the 422s the test asked for are in it.
    assert!(
        entries.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("status of 422"))),
        "the browser log has the expected 422s: {entries:#?}"
    );
    let severe: Vec<&Value> = entries
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .filter(|e| {
            let message = e["message"].as_str().unwrap_or_default();
            !(e["source"] == "network" && message.contains("status of 422"))
        })
        .collect();
    assert!(severe.is_empty(), "severe browser log entries: {severe:#?}");
}
